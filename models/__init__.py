"""The small model's life: locating GGUF files, prompt and label coding, llama.cpp
classification, and the registry of model versions per task.

llama.cpp's library is loaded here, before this package imports NumPy or SQLAlchemy:
on the H200 machine a CUDA build of llama.cpp (built for the host's own instruction
sets, AMX included) segfaulted inside ``llama_model_load_from_file`` in a process that
had imported the store first, and loaded fine the other way round. The cause is not
yet known (``bench/gpu.sh`` checks both orders on a GPU); the processes that load
models (the workers, the CLI) import this package first, so the order is always this one.

The training process is the exception (``models.training.train_process``): torch and the CUDA
build of llama.cpp abort together in one process, so it is started with
``SHIFTDOWN_TRAINING_PROCESS`` set and never loads llama.cpp.
"""

import os

if not os.environ.get("SHIFTDOWN_TRAINING_PROCESS"):
    import llama_cpp  # noqa: F401
