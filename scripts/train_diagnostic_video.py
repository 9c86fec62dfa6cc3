"""Fine-tune the diagnostic MLLM on the video variant of the VQA task and save it.

    python scripts/train_diagnostic_video.py --out src/tokencodec/models/weights/diagnostic-video

Starts from the image model (``--init-from``, default the shipped weights): the tower already reads
objects, the LM learns to compare frames. A video of T frames is T images in one prompt (LLaVA's
multi-image layout: ``<s> q <image>×64·T q ?``), so frame order reaches the LM only through token
positions, as in LLaVA. Question types (``tokencodec.data.vqa.VIDEO_QUESTION_TYPES``): the direction a
named object moves and the colour of the object that moves; both need more than one frame.

Loss: cross-entropy at the answer position over the video answer words (directions and colours)
plus ``--rel-weight`` × BCE of "does this patch hold the moving object?" from the LM's hidden state
of every image token after ``--rel-layer`` (a training-only head, not saved; the same relevance
idea that made the image model learn). AdamW, warm-up then cosine decay, clipping at 1.
Deterministic given ``--data-seed``, ``--order-seed`` and ``--init-seed``. Prints validation accuracy
per question type every ``--epoch-steps`` steps, evaluates the test split at the end and writes the
model folder (with ``answers.json``) and ``MODEL_CARD.md``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_diagnostic import accuracy_sections, fmt, lr_at  # noqa: E402  (same schedule, same tables)

from tokencodec.data.vqa import VIDEO_ANSWERS, VIDEO_QUESTION_TYPES, VideoVQADataset  # noqa: E402
from tokencodec.models.diagnostic import (  # noqa: E402
    N_IMAGE_TOKENS,
    DiagnosticMLLM,
    build_prompt,
    parameter_count,
    preprocess,
)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--init-from", type=Path, default=None, help="image model folder (default: the shipped one)")
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--min-lr", type=float, default=3e-5)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--rel-weight", type=float, default=2.0)
    p.add_argument("--rel-layer", type=int, default=2)
    p.add_argument("--epoch-steps", type=int, default=250)
    p.add_argument("--train-n", type=int, default=10_000_000)
    p.add_argument("--val-n", type=int, default=200)
    p.add_argument("--test-n", type=int, default=400)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--order-seed", type=int, default=0)
    p.add_argument("--init-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-minutes", type=float, default=28.0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse(argv)
    t_start = time.time()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.init_seed)
    image_model = DiagnosticMLLM.from_pretrained(a.init_from)
    model, tok = image_model.model, image_model.tokenizer
    # RoPE positions are unbounded; the field is only informative, but keep it true
    model.config.text_config.max_position_embeddings = max(512, N_IMAGE_TOKENS * a.frames + 64)
    mllm = DiagnosticMLLM(model, tok, VIDEO_ANSWERS)
    rel_head = torch.nn.Linear(model.config.text_config.hidden_size, 1)
    params = list(model.parameters()) + list(rel_head.parameters())
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": a.weight_decay},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.98))
    print("config:", json.dumps(vars(a), default=str))
    print(f"threads: {torch.get_num_threads()}, parameters: {parameter_count(model):,}")
    train = VideoVQADataset("train", a.train_n, a.data_seed, a.frames)
    val = VideoVQADataset("val", a.val_n, a.data_seed, a.frames)
    order = np.random.default_rng(a.order_seed)
    qmark, image_id = tok.token_to_id("?"), model.config.image_token_id
    history, loss_sum, n_loss, t_epoch, stopped = [], 0.0, 0, time.time(), False
    for step in range(a.steps):
        model.train()
        batch = [train[int(i)] for i in order.integers(0, a.train_n, a.batch)]
        enc = tok.encode_batch([build_prompt(s.question, N_IMAGE_TOKENS * a.frames) + " " + s.answer for s in batch])
        ids = torch.tensor([e.ids for e in enc])
        attn = torch.tensor([e.attention_mask for e in enc])
        target = torch.tensor([mllm.answers.index(s.answer) for s in batch])
        frames = np.stack([s.frames for s in batch]).reshape(-1, *batch[0].frames.shape[1:])
        relevant = torch.from_numpy(np.stack([s.relevant_masks.reshape(-1) for s in batch])).float()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a)
        out = model(input_ids=ids, attention_mask=attn, pixel_values=preprocess(frames), output_hidden_states=True)
        logits = out.logits[ids == qmark][:, mllm.answer_ids]
        loss = F.cross_entropy(logits, target)
        h = out.hidden_states[a.rel_layer][ids == image_id].view(len(batch), -1, model.config.text_config.hidden_size)
        rel_loss = F.binary_cross_entropy_with_logits(rel_head(h)[..., 0], relevant)
        opt.zero_grad(set_to_none=True)
        (loss + a.rel_weight * rel_loss).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        loss_sum, n_loss = loss_sum + loss.item(), n_loss + 1
        last = step + 1 == a.steps
        over = (time.time() - t_start) / 60 > a.max_minutes
        if (step + 1) % a.epoch_steps == 0 or last or over:
            acc = mllm.evaluate(val, batch_size=50)
            print(f"step {step + 1}/{a.steps}: {time.time() - t_epoch:.0f} s, lr {lr_at(step, a):.2e}, "
                  f"loss {loss_sum / n_loss:.3f}, rel {rel_loss.item():.3f}, val {fmt(acc)}", flush=True)
            history.append({"step": step + 1, "loss": loss_sum / n_loss, "val": acc})
            t_epoch, loss_sum, n_loss = time.time(), 0.0, 0
            if over and not last:
                print(f"stopping early: past --max-minutes {a.max_minutes}", flush=True)
                stopped = True
                break
    minutes = (time.time() - t_start) / 60
    model.eval()
    test = mllm.evaluate(VideoVQADataset("test", a.test_n, a.data_seed, a.frames), batch_size=50)
    print(f"trained in {minutes:.1f} min; test ({a.test_n}): {fmt(test)}")
    mllm.save_pretrained(a.out)
    write_card(a, parameter_count(model), minutes, test, history, stopped)
    print(f"saved to {a.out}")
    return 0


def write_card(a, n_params: int, minutes: float, test: dict, history: list, stopped: bool) -> None:
    cmd = "python scripts/train_diagnostic_video.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    text = f"""# Diagnostic video MLLM (tokencodec)

The diagnostic MLLM (see `../diagnostic/MODEL_CARD.md`) fine-tuned on `VideoVQADataset` ({a.frames}
frames of 64×64; one object moves one patch per frame over a static scene). A video is {a.frames}
images in one prompt, `<s> q <image>×{N_IMAGE_TOKENS * a.frames} q ?` (LLaVA's multi-image layout): frame order
reaches the LM only through token positions. Answers: the {len(VIDEO_ANSWERS)} words of
`VIDEO_ANSWERS` (`answers.json`). It is the observer for temporal token methods.

- Parameters: {n_params:,}
- Training command: `{cmd}`
- Training: {history[-1]['step']} steps × batch {a.batch} videos from the image weights, AdamW lr {a.lr}
  (warm-up {a.warmup}, cosine to {a.min_lr}); answer loss + {a.rel_weight} × relevance loss (each image
  token, after LM layer {a.rel_layer}: does its patch hold the moving object?); seeds data {a.data_seed},
  order {a.order_seed}{' (stopped early at --max-minutes)' if stopped else ''}.
- Wall time: {minutes:.1f} min on CPU ({a.threads} threads).

"""
    data = f'VideoVQADataset("test", {a.test_n}, seed={a.data_seed}, frames={a.frames})'
    text += accuracy_sections(test, history, VIDEO_QUESTION_TYPES, data, a.val_n)
    (a.out / "MODEL_CARD.md").write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
