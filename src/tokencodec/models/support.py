"""Which token-compression method runs on which model adapter: the support matrix.

Each adapter states its rule as a function of the method's declared properties (stage, needs,
CLS), so that a new method lands in the matrix without editing this file.
"""

from __future__ import annotations

from collections.abc import Callable

from tokencodec.tokens.compress import METHODS, TokenMethod

YES, FALLBACK, NO, VIDEO = "yes", "fallback", "—", "video"


def _vit(has_cls: bool) -> Callable[[type[TokenMethod]], str]:
    def rule(m: type[TokenMethod]) -> str:
        if m.video:   # split inference on clips: the receiver rebuilds frames (TowerVideoCoding)
            return VIDEO if m.rebuilds_frames else NO
        if m.stage == "vision-encoder":
            return YES  # ToMeVisionPatch
        if m.stage != "pre-llm":
            return NO  # a bare vision tower has no LLM to prune inside
        if m.needs_cls and not has_cls:
            return FALLBACK if m.cls_fallback else NO
        return YES

    return rule


def _efficientnet(m: type[TokenMethod]) -> str:
    from tokencodec.models.efficientnet_lite0 import supports

    return YES if supports(m) else NO


def _llava(m: type[TokenMethod]) -> str:
    # LLaVA-1.5 layout with its CLIP tower: every method; ToMe merges in the tower (alone, or chained
    # with an in-LLM method); video methods on T-frame prompts (frames=T)
    if m.video:
        return VIDEO
    return YES if m.stage in ("vision-encoder", "pre-llm", "llm") else NO


def _qwen2_vl(m: type[TokenMethod]) -> str:
    from tokencodec.models.qwen2_vl import support

    if m.video:
        return NO      # Qwen2-VL's own video path (temporal patches of 2 frames) is not adapted
    return YES if m.stage == "llm" else support(m)   # in-LLM: Qwen2VLLLMCompression


ADAPTERS: dict[str, tuple[str, Callable[[type[TokenMethod]], str]]] = {
    "CLIP tower": ("tokencodec.models.vision_tower", _vit(has_cls=True)),
    "SigLIP tower": ("tokencodec.models.vision_tower", _vit(has_cls=False)),
    "LLaVA-1.5": ("tokencodec.models.llava", _llava),
    "Qwen2-VL / Qwen2.5-VL": ("tokencodec.models.qwen2_vl", _qwen2_vl),
    "EfficientNet-Lite0": ("tokencodec.models.efficientnet_lite0", _efficientnet),
}


def support_matrix() -> dict[str, dict[str, str]]:
    """``{method: {adapter: "yes" | "fallback" | "video" | "—"}}`` for every registered method ("video": runs
    on clips only)."""
    return {name: {adapter: rule(METHODS.get(name)) for adapter, (_, rule) in ADAPTERS.items()}
            for name in METHODS.names()}


def matrix_markdown() -> str:
    adapters = list(ADAPTERS)
    lines = ["| method | stage | " + " | ".join(adapters) + " |", "|---|---|" + "---|" * len(adapters)]
    for name, row in support_matrix().items():
        lines.append(f"| {name} | {METHODS.get(name).stage} | " + " | ".join(row[a] for a in adapters) + " |")
    return "\n".join(lines) + "\n"


def update_readme(path: str = "README.md") -> None:
    """Rewrite the table between the README's support-matrix markers."""
    import re
    from pathlib import Path

    readme = Path(path)
    text = readme.read_text(encoding="utf-8")
    block = f"<!-- support-matrix -->\n{matrix_markdown()}<!-- /support-matrix -->"
    readme.write_text(re.sub(r"<!-- support-matrix -->\n.*?<!-- /support-matrix -->", lambda _: block, text,
                             flags=re.S), encoding="utf-8")


if __name__ == "__main__":  # python -m tokencodec.models.support  (updates ./README.md)
    update_readme()
