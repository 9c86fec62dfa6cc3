"""Train the Fashion-MNIST ViT observer (a CLIPVisionModel with a CLS head) on the CPU and save it.

    python scripts/train_fashion_vit.py --out src/tokencodec/models/weights/fashion-vit

Data: Debian's ``dataset-fashion-mnist`` (or ``$TOKENCODEC_FASHION_MNIST``), SHA-256 verified. The
60 000 training images are split by ``--data-seed`` into 55 000 for training and 5 000 for
validation (what any tuning looks at); the 10 000 test images are evaluated once, at the end, and
that is the number reported. Augmentation: a random shift of up to 2 pixels (zero padding) and a
horizontal flip. AdamW, linear warm-up then cosine decay, label smoothing 0.1, gradient clipping
at 1; ``--init-seed`` fixes the initialisation, ``--order-seed`` the batches. Prints per epoch its
time, the training loss and the validation accuracy; writes ``config.json``, ``model.safetensors``,
``training.json`` and ``MODEL_CARD.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tokencodec.data.fashion_mnist import CLASSES, load_fashion_mnist
from tokencodec.models.fashion_vit import DEFAULT_CONFIG, FashionViT, preprocess


def augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shift each image by up to 2 px (zero fill) and flip half of them left-right."""
    n = len(images)
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    dy, dx = rng.integers(0, 5, n), rng.integers(0, 5, n)
    out = np.stack([padded[i, dy[i]:dy[i] + 28, dx[i]:dx[i] + 28] for i in range(n)])
    flip = rng.random(n) < 0.5
    out[flip] = out[flip, :, ::-1]
    return out


@torch.inference_mode()
def accuracy(model: FashionViT, images: np.ndarray, labels: np.ndarray, batch: int = 500) -> float:
    model.eval()
    right = 0
    for s in range(0, len(images), batch):
        right += int((model(preprocess(images[s:s + batch])).argmax(-1).numpy() == labels[s:s + batch]).sum())
    model.train()
    return right / len(images)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-steps", type=int, default=300)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--init-seed", type=int, default=0)
    p.add_argument("--order-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", type=Path, default=None, help="folder with the four idx .gz files")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    images, labels = load_fashion_mnist("train", args.data)
    test_images, test_labels = load_fashion_mnist("test", args.data)
    perm = np.random.default_rng(args.data_seed).permutation(len(images))
    val, train = perm[:5000], perm[5000:]
    torch.manual_seed(args.init_seed)
    model = FashionViT(DEFAULT_CONFIG)
    model.vision_tower.set_attn_implementation("sdpa")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"config {json.dumps(DEFAULT_CONFIG)}; {n_params:,} parameters; {len(train)} train, {len(val)} val, "
          f"{len(test_images)} test", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "position" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "position" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=args.lr)
    steps_per_epoch = len(train) // args.batch
    total = steps_per_epoch * args.epochs

    def lr_at(step: int) -> float:
        if step < args.warmup_steps:
            return args.lr * (step + 1) / args.warmup_steps
        t = (step - args.warmup_steps) / max(1, total - args.warmup_steps)
        return args.lr * 0.5 * (1 + math.cos(math.pi * t))

    rng = np.random.default_rng(args.order_seed)
    history, step, t_start = [], 0, time.perf_counter()
    model.train()
    for epoch in range(args.epochs):
        t0, losses = time.perf_counter(), []
        order = rng.permutation(train)
        for b in range(steps_per_epoch):
            idx = order[b * args.batch:(b + 1) * args.batch]
            x, y = preprocess(augment(images[idx], rng)), torch.from_numpy(labels[idx])
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
        val_acc = accuracy(model, images[val], labels[val])
        history.append({"epoch": epoch + 1, "seconds": round(time.perf_counter() - t0, 1),
                        "train_loss": round(float(np.mean(losses)), 4), "val_accuracy": round(val_acc, 4)})
        print(json.dumps(history[-1]), flush=True)
    test_acc = accuracy(model, test_images, test_labels)
    minutes = (time.perf_counter() - t_start) / 60
    print(f"test accuracy {test_acc:.4f} on {len(test_images)} images; {minutes:.1f} min", flush=True)

    model.save_pretrained(args.out)
    summary = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "args": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "parameters": n_params,
        "history": history, "test_accuracy": test_acc, "minutes": round(minutes, 1),
        "torch": torch.__version__}
    (args.out / "training.json").write_text(json.dumps(summary, indent=1))
    (args.out / "MODEL_CARD.md").write_text(f"""# FashionViT (tokencodec observer)

A {n_params:,}-parameter ViT trained here: HF `CLIPVisionModel` ({DEFAULT_CONFIG['num_hidden_layers']} layers,
width {DEFAULT_CONFIG['hidden_size']}, {DEFAULT_CONFIG['num_attention_heads']} heads, greyscale 56×56 input,
4×4 patches: 196 patch tokens + CLS) and a linear head on the CLS after the final layer norm.

- Data: Fashion-MNIST (Xiao, Rasul, Vollgraf 2017; MIT licence), Debian `dataset-fashion-mnist`,
  SHA-256 verified. 55 000 train / 5 000 validation (data seed {args.data_seed}) / 10 000 test.
  Classes: {', '.join(CLASSES)}.
- Input: each 28×28 pixel repeated 2×2, standardised (mean 0.2860, std 0.3530).
- Training: {args.epochs} epochs, batch {args.batch}, AdamW (lr {args.lr}, weight decay {args.weight_decay}),
  warm-up {args.warmup_steps} steps then cosine, label smoothing 0.1, random 2-px shifts and flips,
  {args.threads} CPU threads, {minutes:.1f} min.
- **Test accuracy: {test_acc:.2%}** (10 000 images, evaluated once). Validation per epoch:
  {', '.join(f"{h['val_accuracy']:.2%}" for h in history)}.
- Reproduce: `{summary['command']}`.
- Use: an observer for token compression on real images (accuracy, agreement with the uncompressed
  model); not a fashion classifier for any other purpose.
""")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
