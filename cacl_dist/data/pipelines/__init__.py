"""Input pipelines that turn an epoch plan into batches: ``torchvision`` (everywhere), DALI later."""
