"""Input pipelines that turn an epoch plan into batches: ``torchvision`` (everywhere) and ``dali``
(NVIDIA DALI on the GPU or the CPU, an optional extra imported only when used)."""
