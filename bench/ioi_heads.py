"""What the heads that carry IOI do: for the heads whose exact patch destroys most of the clean -
corrupt gap, where they attend from the last position and what they write straight into the logits.

    .venv/bin/python bench/ioi_heads.py [--pairs 32] [--top 8]

Per head (mean over pairs, clean prompts): attention from the final token to the indirect object
(IO), to the subject's first (S1) and second (S2) mention; its direct logit attribution (DLA) to
``logit(IO) - logit(S)``: the head's output at the last position through the final norm (its scale
frozen at the clean run's) and the unembedding. Wang et al. (2022) call a head that attends to the
IO and raises its logit a name mover, one that attends to the IO and lowers it a negative name
mover; S-inhibition heads attend to S2 and act through later heads' queries (small DLA).
"""

from __future__ import annotations

import argparse

import torch

from editor.attribution.patch_estimates import patch_auto
from editor.model.arch import Arch
from editor.model.capture import capture, encode
from editor.model.loading import load_model
from editor.tasks.ioi import build


def name_positions(tokenizer, prompt: str, io: str, s: str) -> tuple[int, int, int]:
    """Token indices of the IO and of the subject's two mentions (names are one token each)."""
    ids = tokenizer(prompt)["input_ids"]
    io_id, s_id = tokenizer(io, add_special_tokens=False)["input_ids"], tokenizer(s, add_special_tokens=False)["input_ids"]
    assert len(io_id) == len(s_id) == 1, (io, s)
    s_at = [i for i, t in enumerate(ids) if t == s_id[0]]
    return ids.index(io_id[0]), s_at[0], s_at[1]


def role_of(attention: torch.Tensor, dla: float) -> str:
    """A reading of one head from its attention to (IO, S1, S2) and its direct logit attribution."""
    io, s1, s2 = attention.tolist()
    if io + s1 + s2 < 0.1:
        return "does not attend to the names"
    if io > max(s1, s2):
        return "name mover" if dla > 0.1 else "negative name mover" if dla < -0.1 else "attends IO, small DLA"
    if dla > 0.1:
        return "attends the subject and lowers its logit"
    return "attends S2, small DLA (S-inhibition-like)" if s2 > s1 and abs(dla) <= 0.1 else "other"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--pairs", type=int, default=32)
    p.add_argument("--top", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(2)
    lm = load_model(args.model)
    arch = Arch(lm.model)
    pairs = build(args.pairs, seed=0)
    scores = patch_auto(lm.model, lm.tokenizer, pairs, "heads", "noising", confirm=3 * args.top, progress=False)
    heads = [(r["layer"], r["index"], r["normalised"]) for r in scores.ranked(args.top)]
    heads += [(r["layer"], r["index"], r["normalised"]) for r in scores.ranked(by="normalised")[::-1]
              if r["normalised"] < -0.05][:3]  # the strongest heads that work AGAINST the answer, too
    attn = {h[:2]: torch.zeros(3) for h in heads}
    dla = {h[:2]: 0.0 for h in heads}
    unembed = arch.unembed.weight
    norm_w = arch.final_norm.weight
    for e in pairs:
        io, s = e.answer, e.meta["corrupt_answer"]
        where = name_positions(lm.tokenizer, e.prompt, io, s)
        got = capture(lm.model, encode(lm.tokenizer, [e.prompt]), ["attn_probs", "head_out", "resid_post"])
        final = got.tensors["resid_post"][0, -1]
        scale = final.pow(2).mean().add(lm.model.config.rms_norm_eps).rsqrt()
        ids = [lm.tokenizer(x, add_special_tokens=False)["input_ids"][0] for x in (io, s)]
        direction = (unembed[ids[0]] - unembed[ids[1]]) * norm_w * scale
        for layer, head in attn:
            attn[(layer, head)] += got.tensors["attn_probs"][0, layer, head, list(where)]
            dla[(layer, head)] += float(got.tensors["head_out"][0, layer, head] @ direction.detach())
    n = len(pairs)
    print(f"# {args.model}, ioi {n} pairs; heads ranked by the exact noising patch (normalised share of the gap)")
    print("| head | normalised | attention IO / S1 / S2 | DLA to logit(IO) - logit(S) | reads as |")
    print("|---|---|---|---|---|")
    for layer, head, share in heads:
        a = attn[(layer, head)] / n
        d = dla[(layer, head)] / n
        role = role_of(a, d)
        print(f"| {layer}.{head} | {share:.3f} | {a[0]:.2f} / {a[1]:.2f} / {a[2]:.2f} | {d:+.2f} | {role} |")


if __name__ == "__main__":
    main()
