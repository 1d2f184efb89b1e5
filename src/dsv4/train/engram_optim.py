"""Row-wise Adam for Engram tables in any store: only touched rows are read and written.

A dense Adam over an Engram table costs a full pass over the table (and two state tensors
of its size) every step, although a batch addresses a tiny fraction of its rows; for a
memory-mapped table larger than RAM it would fault in the whole file. `SparseRowAdam`
instead consumes what the stores recorded in the forward pass (engram_store.TableStore:
the unique rows U of each lookup and a leaf W [U, dim] whose .grad backward filled) and
per step, per table:

    rows, G = unique rows touched this step, their summed gradients
    m[rows] <- b1 m + (1 - b1) G;   v[rows] <- b2 v + (1 - b2) G^2;   n[rows] += 1
    table[rows] -= lr / (1 - b1^n) * m / (sqrt(v / (1 - b2^n)) + eps)

i.e. Adam (as torch.optim.Adam computes it, no weight decay: SPEC 1.5) applied lazily:
untouched rows and their moments do not move, and the bias correction uses each row's own
update count n (row-wise optimizer state). The state tables live in the same tier as the
table (mmap stores: sibling files `engram_l<k>.table.adam_{m,v,n}`, created sparse).

It quacks like a torch optimizer for the training loop (`param_groups` with name/lr/
peak_lr for the schedule, `step`, `zero_grad`, `state_dict`/`load_state_dict` for
checkpoints; state tensors of mmap tables are zero-copy views and load chunk-wise).
Not covered by the loop's global grad-norm clipping (the rows are not model parameters).
"""

from __future__ import annotations

import torch
from torch import nn

from dsv4.errors import UserError
from dsv4.model.engram_store import TableStore, copy_rows_chunked, table_stores


class SparseRowAdam:
    def __init__(self, model: nn.Module, lr: float, betas=(0.9, 0.95), eps: float = 1e-8,
                 include_memory: bool = False, name: str = "engram_sparse"):
        self.stores: list[tuple[str, TableStore]] = [
            (n, s) for n, s in table_stores(model) if s.kind != "memory" or include_memory]
        self.param_groups = [dict(name=name, lr=lr, peak_lr=lr, betas=tuple(betas), eps=eps)]
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        for n, s in self.stores:
            if s.kind == "memory":
                s.set_sparse()
            s.collect_grads = True
            self.state[n] = {
                "m": s.new_state_table(".adam_m", s.dim, torch.float32),
                "v": s.new_state_table(".adam_v", s.dim, torch.float32),
                "n": s.new_state_table(".adam_n", 1, torch.int32),
            }
        self.steps = 0

    def __bool__(self) -> bool:
        return bool(self.stores)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for _, s in self.stores:
            s.pending.clear()

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
        for name, s in self.stores:
            got = [(u, w.grad) for u, w in s.pending if w.grad is not None]
            s.pending.clear()
            if not got:
                continue
            dev = s.storage.device
            u = torch.cat([g[0] for g in got]).to(dev)
            grads = torch.cat([g[1] for g in got]).to(dev, torch.float32)
            rows, inv = torch.unique(u, return_inverse=True)
            G = torch.zeros(len(rows), s.dim, device=dev).index_add_(0, inv, grads)
            st = self.state[name]
            m = st["m"].index_select(0, rows).lerp_(G, 1 - b1)
            v = st["v"].index_select(0, rows).mul_(b2).addcmul_(G, G, value=1 - b2)
            n = st["n"].index_select(0, rows) + 1
            bc1 = 1 - b1 ** n.double()
            bc2 = 1 - b2 ** n.double()
            denom = (v / bc2.float()).sqrt_().add_(eps)
            p = s.storage.index_select(0, rows).float() - (lr / bc1).float() * m / denom
            s.write(rows, p)
            st["m"].index_copy_(0, rows, m)
            st["v"].index_copy_(0, rows, v)
            st["n"].index_copy_(0, rows, n)
        self.steps += 1

    def state_dict(self) -> dict:
        """Row state as views of the state tables (no copy; torch.save streams them)."""
        return {"steps": self.steps, "param_groups": [dict(g) for g in self.param_groups],
                "rows": {n: dict(st) for n, st in self.state.items()}}

    def load_state_dict(self, state: dict) -> None:
        rows = state["rows"]
        if set(rows) != set(self.state):
            raise ValueError(f"sparse Engram optimizer state is for tables {sorted(rows)}, "
                             f"this model has {sorted(self.state)}")
        for n, st in self.state.items():
            for k, t in st.items():
                if tuple(rows[n][k].shape) != tuple(t.shape):
                    raise ValueError(f"sparse Engram optimizer state {n}.{k} has shape "
                                     f"{tuple(rows[n][k].shape)}, expected {tuple(t.shape)}")
                copy_rows_chunked(t, rows[n][k])
        for g, saved in zip(self.param_groups, state["param_groups"], strict=True):
            g.update({k: saved[k] for k in ("lr", "peak_lr", "eps") if k in saved})
            g["betas"] = tuple(saved.get("betas", g["betas"]))
        self.steps = int(state["steps"])


def sparse_engram_optimizer(model: nn.Module, lr: float, betas=(0.9, 0.95)) -> SparseRowAdam | None:
    """The row-wise optimizer for a model's host/mmap Engram tables, or None if it has none
    (memory tables stay in the dense Adam group of `optim_groups()`)."""
    if not any(s.kind != "memory" for _, s in table_stores(model)):
        return None
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        # every rank would update its own copy (or the same file) with its own rows
        raise UserError("engram_store=host/mmap trains in a single process for now; "
                        "use engram_store=memory with torchrun")
    return SparseRowAdam(model, lr, betas)
