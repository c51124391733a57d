"""Weight sync learner -> rollout engine through a dedicated collective group, bucketed.

A lease (``rollout.fleet.LeasedEngine``) forms a two-rank group between the stage process (rank 0: the sender, which
hosts the group's ``TCPStore``) and its engine actor (rank 1: the receiver). The handshake goes through Ray: the
client opens the store on a free port, calls the actor's ``sync_join`` (address, port, token) asynchronously and
joins from its own side; both construct the backend at once (``connect``), then exchange one small check tensor.

* The group never touches torch.distributed's default group (the learner's DeepSpeed / DDP group, or vLLM's own
  world group inside the engine): the backend object (``ProcessGroupGloo`` on CPU, ``ProcessGroupNCCL`` on GPU, the
  way vLLM's ``stateless_init_torch_distributed_process_group`` builds it) is made directly from a ``PrefixStore``
  over the lease's own ``TCPStore`` and is only ever called directly (``backend.broadcast``), never through
  ``torch.distributed.*`` functions, so ``init_process_group`` is neither needed nor affected.
* A sync: ``plan_buckets`` groups the state dict by dtype into buckets of at most ``bucket_bytes`` (a tensor larger
  than that gets a bucket of its own; tensors are never split); the ``SyncPlan`` (names, shapes, dtypes, offsets:
  small) travels as the argument of the actor's ``sync_receive`` call, which the client issues first (asynchronously);
  then the sender broadcasts each flattened bucket (as bytes, so every dtype goes the same way) while the receiver
  posts the matching receives into fresh buffers and rebuilds the tensors as views of them (``unflatten``), in the
  state dict's order. The engine then reloads them exactly as the object-store path does (checkpoint names, FP4
  packing on GPU, vLLM's in-place reload).
* What a learner pushes is a ``RolloutWeights``: names, shapes and stored dtypes up front, the tensors gathered one
  bucket at a time while the sender flattens them (under ZeRO-3 every rank gathers only that bucket's parameters and
  rank 0's copy alone is sent). Floating tensors travel in its ``wire_dtype`` (the learner's training dtype: bf16 for
  a bf16 learner, never an upcast to fp32) and the receiver casts them to the engine's dtype (``SyncPlan.cast_to``).
* On a GPU the learner and the engine share, no group is formed: ``IpcSender`` / ``IpcReceiver`` hand each bucket
  over as a CUDA IPC handle (see "CUDA IPC" below).
* Errors of the transport (the group cannot be formed, a broadcast fails or times out, an IPC handle cannot be
  opened) are ``SyncError``; the client then falls back to Ray's object store for the rest of the lease.

Nothing here imports Ray or vLLM: the module is used on both sides and in the tests without either.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable, Mapping

import torch

SYNC_MODES = ("collective", "object_store")
DEFAULT_BUCKET_MB = 64
FORM_TIMEOUT_S = 30.0          # forming the group (store connect + backend rendezvous + check broadcast)
SYNC_TIMEOUT_S = 300.0         # one bucket's broadcast
_CHECK = 0x5EED5                # the formation's check value (rank 0 broadcasts it, rank 1 compares)


class SyncError(RuntimeError):
    """The collective transport failed (group not formed, broadcast failed or timed out): use the object store."""


# --------------------------------------------------------------------------------------------------- the plan
def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def to_dtype(name: str) -> torch.dtype:
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dt


@dataclass(frozen=True)
class TensorMeta:
    """One tensor in a bucket: ``numel`` elements at element ``offset`` of the bucket's flat buffer."""
    name: str
    shape: tuple[int, ...]
    offset: int
    numel: int


@dataclass(frozen=True)
class Bucket:
    """Tensors of one dtype flattened back to back into one buffer of ``numel`` elements."""
    dtype: str
    numel: int
    tensors: tuple[TensorMeta, ...]

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=to_dtype(self.dtype)).element_size()

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize


@dataclass(frozen=True)
class SyncPlan:
    """What the receiver needs to rebuild the state dict: its names in order and the buckets. Small (no data).
    ``cast_to``: the engine's dtype (``float32`` / ``bfloat16``): the receiver casts floating tensors to it (None:
    kept as they travelled)."""
    names: tuple[str, ...]
    buckets: tuple[Bucket, ...]
    cast_to: str | None = None

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buckets)


def wire_dtype_of(t: torch.Tensor | torch.dtype, wire_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype a tensor travels in: ``wire_dtype`` for floating tensors when given (the learner's training dtype:
    bf16 for a bf16 learner, never an upcast to fp32), else its own."""
    dt = t if isinstance(t, torch.dtype) else t.dtype
    return wire_dtype if wire_dtype is not None and dt.is_floating_point else dt


def plan_buckets(tensors: Mapping[str, torch.Tensor], bucket_bytes: int,
                 wire_dtype: torch.dtype | None = None) -> SyncPlan:
    """Group ``tensors`` by the dtype they travel in (``wire_dtype_of``; in order of first appearance), then greedily
    into buckets of at most ``bucket_bytes`` bytes, keeping the state dict's order within a dtype. A tensor larger
    than ``bucket_bytes`` gets a bucket of its own (tensors are never split). Only shapes and dtypes are read:
    ``tensors`` may be meta tensors (``RolloutWeights.plan``)."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    by_dtype: dict[str, list[tuple[str, torch.Tensor]]] = {}
    for name, t in tensors.items():
        by_dtype.setdefault(dtype_name(wire_dtype_of(t, wire_dtype)), []).append((name, t))
    buckets: list[Bucket] = []
    for dt, items in by_dtype.items():
        size = torch.empty((), dtype=to_dtype(dt)).element_size()
        cur: list[TensorMeta] = []
        n = 0
        for name, t in items:
            k = t.numel()
            if cur and (n + k) * size > bucket_bytes:
                buckets.append(Bucket(dt, n, tuple(cur)))
                cur, n = [], 0
            cur.append(TensorMeta(name, tuple(t.shape), n, k))
            n += k
        if cur:
            buckets.append(Bucket(dt, n, tuple(cur)))
    return SyncPlan(tuple(tensors), tuple(buckets))


def flatten_bucket(bucket: Bucket, tensors: Mapping[str, torch.Tensor],
                   device: torch.device | str | None = None) -> torch.Tensor:
    """The bucket's tensors, flattened into one new 1-D buffer of its dtype (a copy: later changes to ``tensors``
    do not reach it) on ``device`` (default: the first tensor's). A floating tensor is cast to the bucket's
    floating dtype (the wire dtype, ``plan_buckets``); any other mismatch is a ValueError."""
    dt = to_dtype(bucket.dtype)
    parts = [tensors[m.name].detach().reshape(-1) for m in bucket.tensors]
    if device is None:
        device = parts[0].device if parts else "cpu"
    device = torch.device(device)
    for i, (m, p) in enumerate(zip(bucket.tensors, parts)):
        if p.dtype != dt and p.dtype.is_floating_point and dt.is_floating_point and p.numel() == m.numel:
            parts[i] = p = p.to(device).to(dt)       # on the target device first: the cast runs there
        if p.dtype != dt or p.numel() != m.numel:
            raise ValueError(f"{m.name}: {p.dtype} x {p.numel()} does not match the plan ({dt} x {m.numel})")
    if len({p.device for p in parts}) > 1:
        parts = [p.to(device) for p in parts]
    if not parts:
        return torch.empty(0, dtype=dt, device=device)
    flat = torch.cat(parts) if len(parts) > 1 else parts[0].clone()
    return flat.to(device)


def unflatten_bucket(bucket: Bucket, flat: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """The bucket's tensors as views of ``flat`` (1-D, the bucket's dtype), with their shapes."""
    if flat.dtype != to_dtype(bucket.dtype) or flat.numel() != bucket.numel:
        raise ValueError(f"buffer {flat.dtype} x {flat.numel()} does not match the bucket "
                         f"({bucket.dtype} x {bucket.numel})")
    return [(m.name, flat[m.offset:m.offset + m.numel].view(m.shape)) for m in bucket.tensors]


def unflatten(plan: SyncPlan, flats: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict again (views of ``flats``), in the plan's (the original) order."""
    got: dict[str, torch.Tensor] = {}
    for bucket, flat in zip(plan.buckets, flats, strict=True):
        got.update(unflatten_bucket(bucket, flat))
    return {name: got[name] for name in plan.names}


def cast_floating(tensors: dict[str, torch.Tensor], dtype: str | None) -> dict[str, torch.Tensor]:
    """The receiver's side of the wire dtype: floating tensors cast to the engine's ``dtype`` (a no-op view where
    they already are in it), the others as they are."""
    if dtype is None:
        return tensors
    dt = to_dtype(dtype)
    return {k: v.to(dt) if v.dtype.is_floating_point else v for k, v in tensors.items()}


class RolloutWeights(Mapping):
    """The weights a learner pushes to an engine, gathered one bucket at a time.

    ``meta``: name -> (full shape, dtype as stored), in state-dict order; ``gather(names)`` -> those tensors, whole
    (under ZeRO-3 a collective every learner rank joins, for exactly those parameters; rank 0 returns them);
    ``wire_dtype``: floating tensors travel in it (the learner's training dtype; None: as stored). The lease's
    transports plan buckets from ``meta`` (``plan``) and gather bucket by bucket while they send, so at most one
    bucket is gathered at a time. As a plain ``Mapping`` (an in-process engine's ``load_state_dict``) it gathers the
    bucket that holds the key asked for and keeps only that one; values are as stored (no wire there)."""

    def __init__(self, meta: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
                 gather, wire_dtype: torch.dtype | None = None, bucket_bytes: int = DEFAULT_BUCKET_MB * 2**20):
        self.meta = dict(meta)
        self._gather = gather
        self.wire_dtype = wire_dtype
        self.bucket_bytes = bucket_bytes
        self._index: dict[str, Bucket] | None = None
        self._held: tuple[Bucket | None, dict[str, torch.Tensor]] = (None, {})

    @classmethod
    def of(cls, tensors: Mapping[str, torch.Tensor], wire_dtype: torch.dtype | None = None) -> "RolloutWeights":
        """Over tensors already whole (a learner without ZeRO-3): ``gather`` is a look-up, no copy."""
        tensors = {k: v.detach() for k, v in tensors.items()}
        return cls({k: (tuple(v.shape), v.dtype) for k, v in tensors.items()},
                   lambda names: {n: tensors[n] for n in names}, wire_dtype)

    def plan(self, bucket_bytes: int, cast_to: str | None = None) -> SyncPlan:
        """The buckets this push travels in (names, shapes, wire dtypes; no data is gathered)."""
        metas = {k: torch.empty(shape, dtype=dt, device="meta") for k, (shape, dt) in self.meta.items()}
        plan = plan_buckets(metas, bucket_bytes, self.wire_dtype)
        return plan if cast_to is None else SyncPlan(plan.names, plan.buckets, cast_to)

    def gather(self, names) -> dict[str, torch.Tensor]:
        self._held = (None, {})                   # what a Mapping access held goes first: one bucket at a time
        return self._gather(list(names))

    def materialize(self, device="cpu", wire: bool = True) -> dict[str, torch.Tensor]:
        """Every tensor on ``device`` (in the wire dtype when ``wire``), gathered bucket by bucket."""
        out: dict[str, torch.Tensor] = {}
        for bucket in self.plan(self.bucket_bytes).buckets:
            got = self.gather([m.name for m in bucket.tensors])
            for m in bucket.tensors:
                v = got[m.name]
                out[m.name] = v.to(device, wire_dtype_of(v, self.wire_dtype if wire else None)).contiguous()
        return {k: out[k] for k in self.meta}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.meta:
            raise KeyError(name)
        bucket, got = self._held
        if name not in got:
            if self._index is None:
                self._index = {m.name: b for b in self.plan(self.bucket_bytes).buckets for m in b.tensors}
            bucket = self._index[name]
            got = self.gather([m.name for m in bucket.tensors])
            self._held = (bucket, got)
        return got[name]

    def __iter__(self):
        return iter(self.meta)

    def __len__(self) -> int:
        return len(self.meta)


def bucket_tensors(source: Mapping[str, torch.Tensor], bucket: Bucket) -> Mapping[str, torch.Tensor]:
    """The tensors of one bucket: gathered now from a ``RolloutWeights``, looked up in a plain dict."""
    if isinstance(source, RolloutWeights):
        return source.gather([m.name for m in bucket.tensors])
    return source


def plan_for(source: Mapping[str, torch.Tensor], bucket_bytes: int, cast_to: str | None = None) -> SyncPlan:
    """The plan of a push: from a ``RolloutWeights``' meta (its wire dtype), or from a plain state dict."""
    if isinstance(source, RolloutWeights):
        return source.plan(bucket_bytes, cast_to)
    plan = plan_buckets(source, bucket_bytes)
    return plan if cast_to is None else SyncPlan(plan.names, plan.buckets, cast_to)


def _as_bytes(flat: torch.Tensor) -> torch.Tensor:
    """A 1-D buffer as uint8 (a view): every dtype travels the same way, on any backend."""
    return flat.view(torch.uint8) if flat.numel() else flat.new_empty(0, dtype=torch.uint8)


# -------------------------------------------------------------------------------------------------- the group
def _backend(store, rank: int, backend: str, own_address: str | None, timeout: timedelta):
    """The backend object of a 2-rank group over ``store`` (a PrefixStore), made directly: no default group."""
    import torch.distributed as dist

    if backend == "gloo":
        opts = dist.ProcessGroupGloo._Options()
        opts._timeout = timeout
        opts._devices = [dist.ProcessGroupGloo.create_device(hostname=own_address) if own_address
                         else dist.ProcessGroupGloo.create_default_device()]
        return dist.ProcessGroupGloo(store, rank, 2, opts)
    if backend == "nccl":
        if not dist.is_nccl_available():
            raise SyncError("backend nccl: this torch has no NCCL")
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        pg = dist.ProcessGroupNCCL(store, rank, 2, opts)
        pg._set_sequence_number_for_group()
        return pg
    raise ValueError(f"unknown weight-sync backend {backend!r}; expected gloo or nccl")


def _device_for(backend: str, device) -> torch.device:
    if backend == "gloo":
        return torch.device("cpu")
    if device is not None:
        return torch.device(device)
    return torch.device("cuda", torch.cuda.current_device())


class _Side:
    """What both ranks share: the backend, the broadcast, the check and the teardown."""

    rank: int
    backend: str
    device: torch.device
    form_timeout: timedelta          # the store, the backend's rendezvous, the check broadcast
    timeout: timedelta               # each broadcast of a sync
    pg = None
    store = None

    def _connect(self, prefix_store, own_address: str | None) -> None:
        try:
            self.pg = _backend(prefix_store, self.rank, self.backend, own_address, self.form_timeout)
            check = torch.tensor([_CHECK if self.rank == 0 else 0], dtype=torch.int64, device=self.device)
            self._broadcast(check, self.form_timeout).wait()   # the first collective: NCCL's communicator starts
            if int(check.item()) != _CHECK:
                raise SyncError(f"weight-sync group check failed: got {int(check.item())}")
        except SyncError:
            self.close()
            raise
        except Exception as e:  # noqa: BLE001 -- any failure to form the group means: no collective here
            self.close()
            raise SyncError(f"could not form the weight-sync group ({self.backend}): {type(e).__name__}: "
                            f"{' '.join(str(e).split())[:300]}") from e

    def _broadcast(self, t: torch.Tensor, timeout: timedelta | None = None):
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank, opts.rootTensor, opts.timeout = 0, 0, timeout or self.timeout
        return self.pg.broadcast([t], opts)

    def close(self) -> None:
        """Tear the group down (a peer blocked in a broadcast then fails at once instead of timing out)."""
        pg, self.pg = self.pg, None
        if pg is not None:
            for stop in ("abort", "shutdown"):
                fn = getattr(pg, stop, None)
                if fn is None:
                    continue
                try:
                    fn()
                    break
                except Exception:  # noqa: BLE001 -- best effort
                    continue
        self.store = None


class WeightSender(_Side):
    """Rank 0 (the stage process): hosts the group's store on a free port of ``address`` (an address of this node
    the engine can reach: Ray's node IP), then ``connect()`` while the engine joins (see the module docstring)."""

    rank = 0

    def __init__(self, address: str, backend: str = "gloo", timeout_s: float = FORM_TIMEOUT_S,
                 sync_timeout_s: float = SYNC_TIMEOUT_S, device=None):
        import torch.distributed as dist

        self.address, self.backend = address, backend
        self.device = _device_for(backend, device)
        self.form_timeout = timedelta(seconds=timeout_s)
        self.timeout = timedelta(seconds=sync_timeout_s)
        self.token = uuid.uuid4().hex
        try:
            self.store = dist.TCPStore(host_name=address, port=0, world_size=2, is_master=True,
                                       timeout=self.form_timeout, wait_for_workers=False)
        except Exception as e:  # noqa: BLE001
            raise SyncError(f"could not open the weight-sync store on {address}: {type(e).__name__}: {e}") from e
        self.port = int(self.store.port)

    def join_args(self) -> dict:
        """What the receiver needs to join (``WeightReceiver(**join_args, own_address=...)``)."""
        return {"address": self.address, "port": self.port, "token": self.token, "backend": self.backend,
                "timeout_s": self.form_timeout.total_seconds(), "sync_timeout_s": self.timeout.total_seconds()}

    def connect(self) -> None:
        """Blocks until the receiver has joined (or ``timeout_s``: ``SyncError``)."""
        import torch.distributed as dist

        self._connect(dist.PrefixStore(f"weight_sync/{self.token}/", self.store), self.address)

    def send(self, plan: SyncPlan, tensors: Mapping[str, torch.Tensor], keep: bool = True,
             window: int = 2) -> list[torch.Tensor] | None:
        """Broadcast every bucket of ``plan`` from ``tensors`` (a ``RolloutWeights``: each bucket gathered just
        before it is flattened), flattened on this side's device in the bucket's (wire) dtype, with ``window``
        broadcasts in flight (flattening the next bucket overlaps the transfer of the previous one). ``keep``:
        return the flat buckets on the CPU, a snapshot of what was sent (on the CPU backend the buffers themselves,
        no extra copy; on a GPU each bucket is copied to the CPU once its broadcast is done, so at most ``window``
        buckets are held on the GPU)."""
        if self.pg is None:
            raise SyncError("the weight-sync group is closed")
        kept: list[torch.Tensor] = []
        inflight: list[tuple[object, torch.Tensor]] = []

        def done(work, flat) -> None:
            if work is not None:
                work.wait()
            if keep:
                kept.append(flat if flat.device.type == "cpu" else flat.to("cpu"))   # ordered after the broadcast

        try:
            for bucket in plan.buckets:
                flat = flatten_bucket(bucket, bucket_tensors(tensors, bucket), self.device)
                inflight.append((self._broadcast(_as_bytes(flat)) if flat.numel() else None, flat))
                while len(inflight) >= window:
                    done(*inflight.pop(0))
            while inflight:
                done(*inflight.pop(0))
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()
        except Exception as e:  # noqa: BLE001 -- the transport failed
            raise SyncError(f"weight-sync broadcast failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}") \
                from e
        return kept if keep else None


class WeightReceiver(_Side):
    """Rank 1 (the engine actor): joins the sender's store and group; ``receive(plan)`` rebuilds the state dict.
    ``backend="cuda_ipc"`` gives an ``IpcReceiver`` (no group: the engine's ``sync_join`` makes either)."""

    rank = 1

    def __new__(cls, *args, **kwargs):
        backend = kwargs.get("backend", args[3] if len(args) > 3 else "gloo")
        if cls is WeightReceiver and backend == "cuda_ipc":
            cls = IpcReceiver
        return super().__new__(cls)

    def __init__(self, address: str, port: int, token: str, backend: str = "gloo",
                 timeout_s: float = FORM_TIMEOUT_S, sync_timeout_s: float = SYNC_TIMEOUT_S,
                 own_address: str | None = None, device=None):
        import torch.distributed as dist

        self.backend = backend
        self.device = _device_for(backend, device)
        self.form_timeout = timedelta(seconds=timeout_s)
        self.timeout = timedelta(seconds=sync_timeout_s)
        try:
            self.store = dist.TCPStore(host_name=address, port=int(port), world_size=2, is_master=False,
                                       timeout=self.form_timeout)
        except Exception as e:  # noqa: BLE001 -- unreachable address / port, or a timeout
            raise SyncError(f"could not reach the weight-sync store at {address}:{port}: {type(e).__name__}: "
                            f"{' '.join(str(e).split())[:300]}") from e
        self._connect(dist.PrefixStore(f"weight_sync/{token}/", self.store), own_address)

    def receive(self, plan: SyncPlan) -> dict[str, torch.Tensor]:
        """Post a receive for every bucket (the sender broadcasts them in order), wait, rebuild the tensors. The
        whole state dict is received before anything is reloaded, so a failed transfer leaves the engine's weights
        as they were (and the fallback reloads them all); the cost is one copy of the weights on the receiving
        device during a sync (an allocation failure is a ``SyncError`` too: the object store then carries them)."""
        if self.pg is None:
            raise SyncError("the weight-sync group is closed")
        try:
            flats = [torch.empty(b.numel, dtype=to_dtype(b.dtype), device=self.device) for b in plan.buckets]
            works = [self._broadcast(_as_bytes(f)) for f in flats if f.numel()]
            for w in works:
                w.wait()
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()
        except Exception as e:  # noqa: BLE001
            raise SyncError(f"weight-sync receive failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}") \
                from e
        return cast_floating(unflatten(plan, flats), plan.cast_to)


# ------------------------------------------------------------------------------------------------- CUDA IPC
# Learner and engine on one GPU (NCCL refuses two ranks on one device): the learner flattens each bucket on its GPU
# and exports it with ``torch.multiprocessing.reductions.reduce_tensor``; only the handles (a few hundred bytes per
# bucket) travel, as the plan of the engine's ``sync_receive``; the engine opens them on its device
# (``rebuild_cuda_tensor``), casts to its dtype and reloads; the call's return is the acknowledgement, after which
# the learner drops the buckets and ``torch.cuda.ipc_collect()`` lets the allocator reuse them. The handle layout is
# vLLM 0.32's ``ipc`` weight-transfer backend's (``vllm/distributed/weight_transfer/ipc_engine.py``): a dict from
# the physical GPU's UUID to ``reduce_tensor``'s rebuild arguments, argument 6 (the device index, which depends on
# each process's CUDA_VISIBLE_DEVICES) replaced by the receiver's own. vLLM's engine class itself is not used: it
# loads through ``model.load_weights`` under a layerwise reload started by ``LLM.start_weight_update``, not through
# the engine's ``load_weights`` (checkpoint names of fused experts, FP4 packing, route capture re-bound).
_IPC_DEVICE_ARG = 6              # reduce_tensor(cuda tensor)[1][6]: the device index


def _ipc_device(device=None) -> torch.device:
    """This process's CUDA device (the one Ray's CUDA_VISIBLE_DEVICES left as current), or ``device``."""
    return torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())


def _ipc_device_index(device: torch.device) -> int:
    """The index a handle is opened on in this process (vLLM's ipc engine: ``self.device.index``)."""
    return device.index or 0


def gpu_uuid(device: torch.device) -> str:
    """The physical GPU's UUID (the same in every process, whatever its CUDA_VISIBLE_DEVICES)."""
    return str(torch.cuda.get_device_properties(device.index or 0).uuid)


@dataclass(frozen=True)
class IpcPlan(SyncPlan):
    """A ``SyncPlan`` with one CUDA IPC handle per bucket (``{gpu uuid: rebuild args}``, None for an empty one)."""
    handles: tuple[dict | None, ...] = ()


class IpcSender:
    """The learner's side of a CUDA IPC sync: ``share(plan, tensors)`` flattens every bucket on ``device`` (the
    learner's GPU), exports it and returns the ``IpcPlan``; the buckets stay alive until ``release()``, which the
    lease calls once the engine has acknowledged (its ``sync_receive`` returned). The whole push is in flight at
    once (the engine reloads it in one call): one copy of the weights in the wire dtype on the GPU meanwhile."""

    backend = "cuda_ipc"

    def __init__(self, device=None, timeout_s: float = FORM_TIMEOUT_S, sync_timeout_s: float = SYNC_TIMEOUT_S):
        self.device = _ipc_device(device)
        self.timeout_s, self.sync_timeout_s = timeout_s, sync_timeout_s
        self.token = uuid.uuid4().hex
        self._held: list[torch.Tensor] = []

    def join_args(self) -> dict:
        """The engine's ``sync_join`` arguments (no store, no address: nothing to rendezvous)."""
        return {"address": "", "port": 0, "token": self.token, "backend": self.backend,
                "timeout_s": self.timeout_s, "sync_timeout_s": self.sync_timeout_s}

    def connect(self) -> None:
        """Nothing to form."""

    def share(self, plan: SyncPlan, tensors: Mapping[str, torch.Tensor]) -> IpcPlan:
        from torch.multiprocessing.reductions import reduce_tensor

        self.release(keep=False)
        try:
            uid = gpu_uuid(self.device)
            handles: list[dict | None] = []
            for bucket in plan.buckets:
                flat = flatten_bucket(bucket, bucket_tensors(tensors, bucket), self.device)
                self._held.append(flat)
                handles.append({uid: tuple(reduce_tensor(flat)[1])} if flat.numel() else None)
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()   # the engine reads finished buckets
        except Exception as e:  # noqa: BLE001 -- no handle, no IPC: the lease falls back
            self.release(keep=False)
            raise SyncError(f"CUDA IPC export failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}") from e
        return IpcPlan(plan.names, plan.buckets, plan.cast_to, tuple(handles))

    def release(self, keep: bool = True) -> list[torch.Tensor] | None:
        """Drop the shared buckets (after the engine's acknowledgement); ``keep``: their CPU copies first (the
        lease's snapshot for a replaced engine)."""
        held, self._held = self._held, []
        kept = [f.to("cpu") for f in held] if keep else None
        del held
        if self.device.type == "cuda":
            torch.cuda.ipc_collect()        # blocks the engine has let go of go back to the allocator
        return kept

    def close(self) -> None:
        self.release(keep=False)


class IpcReceiver(WeightReceiver):
    """The engine's side: ``receive(IpcPlan)`` opens each bucket's handle on this process's device (the GPU whose
    UUID the handle names; another GPU is a ``SyncError``, and the lease falls back), rebuilds the tensors as views
    of the learner's buffers and casts them to the engine's dtype. The views are valid until the caller returns
    (the learner frees the buckets only after that acknowledgement)."""

    def __init__(self, address: str = "", port: int = 0, token: str = "", backend: str = "cuda_ipc",
                 timeout_s: float = FORM_TIMEOUT_S, sync_timeout_s: float = SYNC_TIMEOUT_S,
                 own_address: str | None = None, device=None):
        self.backend = "cuda_ipc"
        self.device = _ipc_device(device)
        self.form_timeout = timedelta(seconds=timeout_s)
        self.timeout = timedelta(seconds=sync_timeout_s)
        self.open = True

    def receive(self, plan: SyncPlan) -> dict[str, torch.Tensor]:
        from torch.multiprocessing.reductions import rebuild_cuda_tensor

        if not self.open:
            raise SyncError("the weight-sync receiver is closed")
        if not isinstance(plan, IpcPlan) or len(plan.handles) != len(plan.buckets):
            raise SyncError("a CUDA IPC receiver needs an IpcPlan with one handle per bucket")
        try:
            uid = gpu_uuid(self.device)
            flats = []
            for bucket, handle in zip(plan.buckets, plan.handles):
                if handle is None:
                    flats.append(torch.empty(0, dtype=to_dtype(bucket.dtype), device=self.device))
                    continue
                if uid not in handle:
                    raise SyncError(f"the learner's bucket is on GPU {', '.join(handle)}, this engine on {uid}")
                args = list(handle[uid])
                args[_IPC_DEVICE_ARG] = _ipc_device_index(self.device)
                flats.append(rebuild_cuda_tensor(*args))
        except SyncError:
            raise
        except Exception as e:  # noqa: BLE001
            raise SyncError(f"CUDA IPC import failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}") from e
        return cast_floating(unflatten(plan, flats), plan.cast_to)

    def close(self) -> None:
        self.open = False
