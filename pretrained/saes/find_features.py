"""Find interpretable SAE latents by checking them against lexer labels of held-out code.

    python pretrained/saes/find_features.py [--sae NAME_OR_PATH] [--stride 4] [--threads 1]
                                            [--top 5] [--show 3516 3955 ...] [--json out.json]

How it works (the method behind ``pretrained/saes/FEATURES.md``):

1. **Documents.** The held-out rows (``saehooks.load_eval_tokens()``) are cut from one
   stream ``EOT doc EOT doc ...`` as ``[BOS, 255 stream tokens]``, so the rows, joined
   without their first token, give back every held-out file (the last one truncated).
   Each document is decoded from the tokens' bytes, so every BPE token has an exact
   character span in it.
2. **Lexer labels.** Each document is lexed with Python's :mod:`tokenize` (the files
   are the CPython 3.11 standard library; a document that ``tokenize`` cannot finish,
   like the truncated last one, keeps the labels of the part it did lex). A BPE token
   takes the labels of its *anchor* character: its first non-whitespace character, or
   its last character if it is all whitespace (so ``'\\n        '`` belongs to the line
   it indents). Labels (see :data:`LABELS`): inside a ``#`` comment, inside a one-line
   string literal, inside a triple-quoted string, a standalone string statement
   (docstring), an f-string, the token after ``def`` (and when it starts a dunder
   name), the token that starts a dunder name, the ``def``/``class``/decorator/
   ``import`` line (logical line, so a parenthesised import counts whole), the ``:``
   that opens a block (alone and at indentation 12), the indentation of the physical
   line (for code tokens only: comments and strings get no indentation label),
   numbers, keywords, ``self``, and tokens holding a newline.
3. **Scores.** Every ``--stride``-th held-out row is run through the model up to the
   SAE's hook and encoded; BOS tokens (row starts and document separators) are left
   out. For each latent ``f`` and label ``L``: *precision* = share of ``f``'s firings
   (activation > 0) on tokens with ``L``, *recall* = share of ``L``-tokens on which
   ``f`` fires, F1 their harmonic mean, and *density* = share of all tokens on which
   ``f`` fires. The label's *base rate* (share of tokens with ``L``) is what precision
   is to be compared with.
4. **Output.** Per label, the best latents by F1 and the most precise latents among
   those with recall >= ``--min-recall``; with ``--show``, the six best labels (by F1)
   of each given latent. Candidates are then read by their top
   activating examples and logit effects: ``python demos/inspect_feature.py --feature N``.

Runs on CPU in well under a minute at ``--stride 4`` (279 rows, ~71k tokens).
"""

from __future__ import annotations

import argparse
import io
import json
import keyword
import tokenize
from dataclasses import dataclass

import numpy as np
import torch

LABELS: dict[str, str] = {
    "in_comment": "inside a # comment (the # and the words after it)",
    "in_string": "inside a one-line string literal (quotes and prefix included)",
    "in_triple_string": "inside a triple-quoted string",
    "docstring": "inside a string that is a statement of its own (docstrings)",
    "in_fstring": "inside an f-string (one-line or triple-quoted)",
    "after_def": "the token right after the `def` token",
    "after_class": "the token right after the `class` token",
    "dunder_start": "the token that starts a dunder name (`__init__`, `__name__`, ...)",
    "def_dunder": "the token right after `def` when it starts a dunder name",
    "def_line": "on a def line (the whole signature, also when it spans lines)",
    "class_line": "on a class line",
    "decorator_line": "on a decorator line",
    "import_line": "on an import / from line (a parenthesised import counts whole)",
    "block_colon": "the ':' that ends a block-opening line",
    "block_colon_indent12": "the ':' that ends a block-opening line indented by 12",
    "indent0": "code (not comment or string) on a line that is not indented",
    "indent>=8": "code (not comment or string) on a line indented by 8 or more spaces",
    "indent>=12": "code (not comment or string) on a line indented by 12 or more spaces",
    "indent>=16": "code (not comment or string) on a line indented by 16 or more spaces",
    "number": "inside a number literal",
    "keyword": "a Python keyword (if, for, return, ...)",
    "self": "the name `self`",
    "has_newline": "the token contains a newline",
}
"""Label name -> meaning. Every label is a property of one held-out token."""

_ANY_CHAR_LABELS = {"block_colon", "block_colon_indent12"}
"""Labels a token takes if any of its characters has them (not just its anchor)."""

_BLOCK_KEYWORDS = {
    "if",
    "elif",
    "else",
    "for",
    "while",
    "try",
    "except",
    "finally",
    "with",
    "def",
    "class",
    "async",
    "match",
    "case",
}


@dataclass
class Document:
    text: str
    char_labels: dict[str, np.ndarray]  # label -> bool [len(text)]
    indent: np.ndarray  # int [len(text)]: leading spaces of each character's physical line
    complete: bool  # tokenize lexed the whole text


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode (the ByteLevel pre-tokenizer's alphabet)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def token_bytes(tokenizer, ids: list[int]) -> list[bytes]:
    """The raw bytes of each token id (byte-level BPE)."""
    dec = _byte_decoder()
    return [bytes(dec[ch] for ch in piece) for piece in tokenizer.convert_ids_to_tokens(ids)]


def lex(text: str) -> Document:
    """Character-level labels of one Python source text (see :data:`LABELS`)."""
    n = len(text)
    labels = {name: np.zeros(n, dtype=bool) for name in LABELS}
    line_starts = [0]
    for i, ch in enumerate(text):
        if ch == "\n":
            line_starts.append(i + 1)
    indent = np.zeros(n, dtype=np.int32)
    for ln, start in enumerate(line_starts):
        end = line_starts[ln + 1] if ln + 1 < len(line_starts) else n
        line = text[start:end]
        indent[start:end] = len(line) - len(line.lstrip(" "))

    def off(pos: tuple[int, int]) -> int:
        row, col = pos
        return min(line_starts[row - 1] + col, n) if row - 1 < len(line_starts) else n

    toks: list[tokenize.TokenInfo] = []
    complete = True
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            toks.append(tok)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        complete = False  # keep what was lexed (the truncated last document ends mid-file)

    skip = {tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING}
    logical: list[tokenize.TokenInfo] = []  # significant tokens of the current logical line

    def close_line(line_toks: list[tokenize.TokenInfo]) -> None:
        if not line_toks:
            return
        first = line_toks[0]
        head = first.string
        if head == "async" and len(line_toks) > 1:
            head = line_toks[1].string
        span = slice(off(first.start), off(line_toks[-1].end))
        if first.type == tokenize.NAME and head in ("import", "from"):
            labels["import_line"][span] = True
        if first.type == tokenize.NAME and head == "def":
            labels["def_line"][span] = True
        if first.type == tokenize.NAME and head == "class":
            labels["class_line"][span] = True
        if first.type == tokenize.OP and head == "@":
            labels["decorator_line"][span] = True
        last = line_toks[-1]
        if (
            last.type == tokenize.OP
            and last.string == ":"
            and first.type == tokenize.NAME
            and head in _BLOCK_KEYWORDS
        ):
            a = off(last.start)
            labels["block_colon"][a] = True
            if indent[a] == 12:
                labels["block_colon_indent12"][a] = True
        if len(line_toks) == 1 and first.type == tokenize.STRING:
            labels["docstring"][off(first.start) : off(first.end)] = True

    for tok in toks:
        a, b = off(tok.start), off(tok.end)
        if tok.type == tokenize.COMMENT:
            labels["in_comment"][a:b] = True
        elif tok.type == tokenize.STRING:
            body = tok.string.lstrip("rRbBuUfF")
            prefix = tok.string[: len(tok.string) - len(body)].lower()
            triple = body[:3] in ('"""', "'''")
            labels["in_triple_string" if triple else "in_string"][a:b] = True
            if "f" in prefix:
                labels["in_fstring"][a:b] = True
        elif tok.type == tokenize.NUMBER:
            labels["number"][a:b] = True
        elif tok.type == tokenize.NAME:
            if keyword.iskeyword(tok.string):
                labels["keyword"][a:b] = True
            if tok.string == "self":
                labels["self"][a:b] = True
            if len(tok.string) > 4 and tok.string.startswith("__") and tok.string.endswith("__"):
                labels["dunder_start"][a] = True
        if tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
            close_line(logical)
            logical = []
        elif tok.type not in skip:
            logical.append(tok)
    close_line(logical)
    code = ~(labels["in_comment"] | labels["in_string"] | labels["in_triple_string"])
    for name, arr in labels.items():
        if name.startswith("indent"):
            arr[:] = _indent_rule(name, indent) & code
    return Document(text, labels, indent, complete)


def _indent_rule(name: str, indent: np.ndarray) -> np.ndarray:
    if name == "indent0":
        return indent == 0
    return indent >= int(name.split(">=")[1])


def _anchor(piece: bytes) -> int:
    """Byte index in ``piece`` of the character whose labels the token takes."""
    for i, b in enumerate(piece):
        if b not in b" \t\n\r\f\v":
            return i
    return len(piece) - 1


def label_tokens(tokenizer, rows: torch.Tensor, bos: int = 0) -> tuple[torch.Tensor, int]:
    """Labels of every token of the held-out rows.

    ``rows`` must be the full held-out set (``[BOS, stream...]`` rows cut from one
    stream), not a subset: documents are rebuilt across row boundaries. BOS tokens get
    no label.

    Returns:
        bool ``[n_rows, n_ctx, len(LABELS)]`` (label order of :data:`LABELS`), and the
        number of documents that :mod:`tokenize` could not lex to the end.
    """
    n_rows, n_ctx = rows.shape
    stream = rows[:, 1:].reshape(-1).tolist()
    names = list(LABELS)
    out = np.zeros((len(stream), len(names)), dtype=bool)
    pieces = token_bytes(tokenizer, stream)
    incomplete = 0
    # documents: maximal runs of non-BOS tokens
    i = 0
    while i < len(stream):
        if stream[i] == bos:
            i += 1
            continue
        j = i
        while j < len(stream) and stream[j] != bos:
            j += 1
        raw = b"".join(pieces[i:j])
        text = raw.decode("utf-8", errors="replace")
        doc = lex(text)
        incomplete += not doc.complete
        # byte offset -> char offset (text is valid UTF-8 unless a document was cut)
        char_of_byte = np.zeros(len(raw) + 1, dtype=np.int64)
        pos = 0
        for c, ch in enumerate(text):
            w = len(ch.encode("utf-8")) if ch != "\ufffd" else 1
            char_of_byte[pos : pos + w] = c
            pos += w
        char_of_byte[pos:] = len(text)
        starts = np.cumsum([0] + [len(pc) for pc in pieces[i : j - 1]])
        anchors = starts + np.array([_anchor(pc) for pc in pieces[i:j]], dtype=np.int64)
        chars = char_of_byte[np.minimum(anchors, max(len(raw) - 1, 0))]
        chars = np.minimum(chars, max(len(text) - 1, 0))
        for li, name in enumerate(names):
            if name == "has_newline":
                out[i:j, li] = [b"\n" in pc for pc in pieces[i:j]]
            elif name in ("after_def", "after_class"):
                # the previous token is the keyword itself (not the word in a comment)
                word = name[len("after_") :].encode()
                kw = doc.char_labels["keyword"][chars[:-1]] if len(text) else []
                out[i + 1 : j, li] = [
                    pc.strip() == word and bool(k) for pc, k in zip(pieces[i : j - 1], kw)
                ]
            elif name == "def_dunder":
                continue  # after the loop: after_def and dunder_start
            elif name in _ANY_CHAR_LABELS and len(text):
                # the token carries the label if any of its characters does ('):' has ':')
                ends = np.append(starts[1:], len(raw))
                lo = char_of_byte[np.minimum(starts, len(raw))]
                hi = char_of_byte[np.minimum(ends, len(raw))]
                csum = np.concatenate([[0], np.cumsum(doc.char_labels[name])])
                out[i:j, li] = csum[np.maximum(hi, lo + 1)] - csum[lo] > 0
            elif len(text):
                out[i:j, li] = doc.char_labels[name][chars]
        i = j
    out[:, names.index("def_dunder")] = (
        out[:, names.index("after_def")] & out[:, names.index("dunder_start")]
    )
    labels = np.zeros((n_rows, n_ctx, len(names)), dtype=bool)
    labels[:, 1:] = out.reshape(n_rows, n_ctx - 1, len(names))
    return torch.from_numpy(labels), incomplete


@torch.no_grad()
def label_scores(
    model, sae, rows: torch.Tensor, labels: torch.Tensor, batch_size: int = 16, bos: int = 0
) -> dict:
    """Per label and latent: precision, recall, F1; per latent: density.

    Returns a dict of tensors: ``precision``/``recall``/``f1`` ``[n_labels, d_sae]``,
    ``density`` ``[d_sae]``, ``base_rate``/``support`` ``[n_labels]``, ``n_tokens``.
    """
    from saehooks.data import sae_acts

    d_sae = sae.cfg.d_sae
    n_labels = labels.shape[-1]
    fired = torch.zeros(d_sae, dtype=torch.float64)
    both = torch.zeros(n_labels, d_sae, dtype=torch.float64)
    support = torch.zeros(n_labels, dtype=torch.float64)
    n_tokens = 0
    for start in range(0, rows.shape[0], batch_size):
        batch = rows[start : start + batch_size]
        keep = (batch != bos).reshape(-1)
        acts = sae_acts(model, sae, batch).float().cpu().reshape(-1, d_sae)[keep]
        lab = labels[start : start + batch_size].reshape(-1, n_labels)[keep].double()
        on = (acts > 0).double()
        fired += on.sum(0)
        both += lab.T @ on
        support += lab.sum(0)
        n_tokens += int(keep.sum())
    precision = both / fired.clamp(min=1)
    recall = both / support.clamp(min=1)[:, None]
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "density": fired / max(n_tokens, 1),
        "fired": fired,
        "base_rate": support / max(n_tokens, 1),
        "support": support,
        "n_tokens": n_tokens,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sae", default="topk-k32-blocks.2.hook_resid_post", help="shipped SAE name or SAE folder"
    )
    parser.add_argument(
        "--stride",
        type=int,
        default=4,
        help="use every STRIDE-th held-out row (default 4: 279 rows)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--top", type=int, default=5, help="latents listed per label")
    parser.add_argument(
        "--min-recall", type=float, default=0.05, help="recall floor for the 'most precise' list"
    )
    parser.add_argument(
        "--min-fired", type=int, default=20, help="fewest firings for a latent to be listed"
    )
    parser.add_argument(
        "--labels",
        nargs="+",
        default=None,
        choices=list(LABELS),
        help="only these labels (default: all)",
    )
    parser.add_argument(
        "--show",
        type=int,
        nargs="+",
        default=[],
        help="also print every label's numbers for these latents",
    )
    parser.add_argument("--json", default=None, help="write the per-label tables here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    import saehooks as sh

    model = sh.load_model()
    sae = sh.load_sae(args.sae)
    all_rows = sh.load_eval_tokens()
    labels, incomplete = label_tokens(model.tokenizer, all_rows)
    labels = labels[:: args.stride]
    rows = all_rows[:: args.stride]
    s = label_scores(model, sae, rows, labels)
    names = list(LABELS)
    n_docs = int((all_rows[:, 1:].reshape(-1) == 0).sum())
    print(
        f"SAE {args.sae} at {sae.cfg.hook_name}: every {args.stride}th held-out row "
        f"({rows.shape[0]} rows, {s['n_tokens']:,} non-BOS tokens; {n_docs} documents "
        f"in the full held-out set, {incomplete} of them not lexed to the end)"
    )
    print(f"latents firing at all: {int((s['fired'] > 0).sum())} of {sae.cfg.d_sae}")
    eligible = s["fired"] >= args.min_fired
    report: dict[str, dict] = {}
    for li, name in enumerate(names):
        if args.labels and name not in args.labels:
            continue
        p, r, f1 = s["precision"][li], s["recall"][li], s["f1"][li]
        print(
            f"\n== {name}: {LABELS[name]} | base rate {float(s['base_rate'][li]):.4f} "
            f"({int(s['support'][li]):,} tokens)"
        )

        by_f1 = torch.where(eligible, f1, -1.0).topk(args.top).indices.tolist()
        precise_ok = eligible & (r >= args.min_recall)
        by_p = torch.where(precise_ok, p, -1.0).topk(args.top).indices.tolist()
        by_p = [f for f in by_p if precise_ok[f]]
        print(" best F1:")
        print("\n".join(_line(s, li, f) for f in by_f1))
        print(f" most precise (recall >= {args.min_recall:g}):")
        print("\n".join(_line(s, li, f) for f in by_p) or "  (none)")
        report[name] = {
            "base_rate": float(s["base_rate"][li]),
            "support": int(s["support"][li]),
            "best_f1": [_entry(s, li, f) for f in by_f1],
            "most_precise": [_entry(s, li, f) for f in by_p],
        }
    for f in args.show:
        print(f"\n== latent {f}: density {float(s['density'][f]):.2%}; labels by F1")
        order = s["f1"][:, f].argsort(descending=True).tolist()
        for li in order[:6]:
            print(
                f"  {names[li]:22s} P {float(s['precision'][li, f]):.2f}  "
                f"R {float(s['recall'][li, f]):.2f}  F1 {float(s['f1'][li, f]):.2f}  "
                f"(base rate {float(s['base_rate'][li]):.4f})"
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "sae": args.sae,
                    "stride": args.stride,
                    "n_tokens": s["n_tokens"],
                    "labels": report,
                    "show": {
                        f: {names[li]: _entry(s, li, f) for li in range(len(names))}
                        for f in args.show
                    },
                },
                fh,
                indent=1,
            )
        print(f"\nwrote {args.json}")


def _line(s: dict, li: int, f: int) -> str:
    return (
        f"  {f:5d}  P {float(s['precision'][li, f]):.2f}  R {float(s['recall'][li, f]):.2f}"
        f"  F1 {float(s['f1'][li, f]):.2f}  density {float(s['density'][f]):7.2%}"
    )


def _entry(s: dict, li: int, f: int) -> dict:
    return {
        "latent": f,
        "precision": round(float(s["precision"][li, f]), 4),
        "recall": round(float(s["recall"][li, f]), 4),
        "f1": round(float(s["f1"][li, f]), 4),
        "density": round(float(s["density"][f]), 5),
    }


if __name__ == "__main__":
    main()
