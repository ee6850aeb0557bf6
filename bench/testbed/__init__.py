"""The testbed builder: four small GPT-2-architecture models trained on CPU (small and big from
scratch on general English, each fine-tuned on a domain corpus), whose full next-token
distributions can be computed exactly, and the top-k dataset the product collects from them.

Run ``python -m bench.testbed.build --out data/testbed`` (see README.md). Modules: ``build``
(the command line and the order of the stages), ``stages`` (sources, corpora, training, exact
figures), ``collection`` (the product's serve/collect/ingest/calibrate/eval over the saved
models), ``card`` (build.json and the data card), ``sources`` (installing the default Debian
corpora) and ``extract`` (their text), ``corpora`` (reading, checking, splitting and packing
documents), ``train`` (the training loop), ``models`` (saving and loading the models, the GPT-2
tokenizer), ``exact`` (full-vocabulary figures), ``pipeline`` (the CLI subprocesses),
``settings``, ``layout`` (what a testbed folder holds), ``errors``, and ``speed`` (the
training-speed measurements).
"""
