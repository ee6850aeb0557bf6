"""Generation from a tuned blend, token by token, over live endpoints.

``next_token`` (one position's blended distribution through the estimator's ``build`` and
``slots``), ``sampling`` (renormalize, temperature, top-p, one seeded draw), ``tuned`` (the
tuned blend's file), ``generate`` (the loop over the endpoints, transcripts and their replay).
"""
