"""Networks: the models tokencodec ships or loads (the diagnostic MLLM, the Fashion-MNIST ViT,
EfficientNet-Lite0, tiny save_pretrained checkpoints, real Hugging Face MLLMs through ``hf.HFMLLM`` and
their prompt formats). The hooks that compress their tokens are in :mod:`tokencodec.adapters`."""
