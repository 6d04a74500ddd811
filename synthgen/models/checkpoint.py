"""Weights and training state in safetensors (no pickle anywhere).

A module is saved as ``<name>.safetensors``; an optimizer's state as tensors in a
safetensors file with its non-tensor structure in the file's metadata (JSON), so
``--resume`` restores AdamW exactly without `torch.load`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file

from synthgen.errors import InputError
from synthgen.files.atomic import atomic_path


def save_module(module: torch.nn.Module, path: str | os.PathLike, *, metadata: dict | None = None,
                half: bool = False) -> Path:
    """``half``: floating-point tensors stored as float16 (`load_module` casts back to the module's dtype)."""
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    with atomic_path(path, overwrite=True) as tmp:
        save_file(state, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
    return Path(path)


def load_module(module: torch.nn.Module, path: str | os.PathLike, *, strict: bool = True) -> torch.nn.Module:
    """Load the safetensors file ``path`` into ``module``. With ``strict``, weights that do not fit
    are one `InputError` naming the missing and unexpected keys and the mismatched shapes."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"weights file not found: {p}")
    state = load_file(str(p))
    if strict:
        problems = state_mismatch(module.state_dict(), state)
        if problems:
            raise InputError(f"{p}: weights do not fit the model built from its config ({problems})")
    module.load_state_dict(state, strict=strict)
    return module


def state_mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], *,
                   show: int = 4) -> str:
    """What keeps ``given`` from loading strictly into a module whose state is ``expected``: its
    missing and unexpected keys and the shapes that differ (at most ``show`` of each); "" if none."""
    def listed(what: str, items: list[str]) -> str:
        more = f" and {len(items) - show} more" if len(items) > show else ""
        return f"{len(items)} {what}: {', '.join(items[:show])}{more}"

    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = [f"{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}" for k in sorted(set(expected) & set(given))
              if given[k].shape != expected[k].shape]
    parts = [listed(w, x) for w, x in (("missing", missing), ("unexpected", unexpected),
                                        ("of another shape (file vs model)", shapes)) if x]
    return "; ".join(parts)


def state_hash(module: torch.nn.Module) -> str:
    """Hash of a module's weights (order-stable), for comparing ranks and records."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_optimizer(opt: torch.optim.Optimizer, path: str | os.PathLike) -> None:
    sd = opt.state_dict()
    tensors, state_meta = {}, {}
    for pid, st in sd["state"].items():
        entry = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{k}"] = v.detach().contiguous().cpu()
                entry[k] = "tensor"
            else:
                entry[k] = v
        state_meta[str(pid)] = entry
    meta = {"state": json.dumps(state_meta), "param_groups": json.dumps(sd["param_groups"])}
    with atomic_path(path, overwrite=True) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_optimizer(opt: torch.optim.Optimizer, path: str | os.PathLike) -> None:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
    state = {}
    for pid, entry in json.loads(meta["state"]).items():
        state[int(pid)] = {k: (tensors[f"{pid}.{k}"] if v == "tensor" else v) for k, v in entry.items()}
    # JSON turns tuples (AdamW's betas) into lists; give them back their type
    groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
              for g in json.loads(meta["param_groups"])]
    opt.load_state_dict({"state": state, "param_groups": groups})
