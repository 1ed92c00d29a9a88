"""The small model's life: locating GGUF files, prompt and label coding, llama.cpp
classification, and the registry of model versions per task."""
