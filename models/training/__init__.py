"""The small model's training room: fine-tuning (``finetune``, run in the child process
``train_process``), the per-architecture conventions it depends on (``architectures``),
and the writers of what it makes: a GGUF LoRA adapter (``gguf_adapter``) or a fully
fine-tuned model's GGUF (``gguf_export``). Serving never imports from here."""
