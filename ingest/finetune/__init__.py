"""Fine-tuning the small model: the training file from a corpus's fine-tuning share
(``training_file``), a fine-tuning job on an OpenAI-compatible API (``openai_job``), or a local
Hugging Face model trained on the CPU (``local``)."""
