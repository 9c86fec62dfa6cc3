"""Adapters: hooks that attach token methods to real models and undo themselves on exit.

One contract (:mod:`~tokencodec.adapters.base`: ``Adapter``, ``CompressionRecord``), one registry of
model families (:mod:`~tokencodec.adapters.registry`, behind ``tokencodec.compress``), one file per
family adapter (``vision_tower``, ``llava``, ``qwen2_vl``, ``qwen2_vl_llm``, ``efficientnet``), and the
in-LLM machinery they share (``llm_stages``: plans, layer hooks, signals; ``llm_pruning``: sequence
surgery as pure functions; ``hooks``: the reversible ``ModelPatch``). Networks live in
:mod:`tokencodec.models`; nothing here imports them.
"""
