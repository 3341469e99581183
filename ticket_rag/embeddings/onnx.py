"""all-mpnet-base-v2 on ONNX Runtime (fp32 or int8), exported here from the verified weights.

Nothing is downloaded: `export_onnx` traces the same model.safetensors that the torch backend loads
into an ONNX graph, fuses it for ONNX Runtime's CPU kernels and, for int8, quantizes it, into the
per-user cache (CACHE_DIR/onnx/<weights sha256>-ort<version>-<variant>-r<recipe>/), atomically.
The manifest beside the graph records its sha256, checked at every load.

Choices in the recipe that are not the obvious ones, measured (numbers: docs/benchmarks-embeddings.md):

- The traced forward pass is all-mpnet-base-v2's own, except that the relative position bias and
  the padding mask are added together once per batch instead of in each of the 12 layers
  (identical vectors; about 8% less CPU for int8).
- Plain dynamic int8 quantization (`quantize_dynamic`) ruins this model: cosine 0.87 to the fp32
  vectors. A handful of hidden channels carry "massive activations" (up to 100x the typical value)
  on a few tokens (<s>, </s>, full stops), so one per-tensor activation scale leaves ordinary tokens
  a few levels of resolution. Those channels are found once per export by running the torch model
  on a few built-in texts; each affected MatMul is split into an int8 part over the ordinary channels
  and a small fp32 part over the outlier channels (LLM.int8()-style decomposition). That brings int8
  to cosine ~0.997 for about 15% of plain int8's speed (int8 still runs ~3.8x torch here, fp32 ~1.6x).
- On x86 CPUs without VNNI, int8 weights are quantized to 7 bits (reduce_range), since the u8 x s8
  kernels there can saturate; such an export has its own cache folder (suffix -7bit).

Dynamic quantization scales activations per batch, so an int8 vector depends a little on the texts
batched with it (a text alone vs in a batch: cosine mean 0.998, min 0.992 measured); fp32 vectors do not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
from langchain_core.embeddings import Embeddings

from ticket_rag.errors import ConfigError
from ticket_rag.runtime.artifacts import sha256_file, verify_sha256

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

OnnxVariant = Literal["onnx-fp32", "onnx-int8"]
VARIANTS: tuple[str, ...] = get_args(OnnxVariant)
MAX_SEQ_LENGTH = 384  # all-mpnet-base-v2's sentence_bert_config.json
# Padded tokens per forward pass (see _batches).
MAX_BATCH_TOKENS = 1024
# Padded positions cost as much as real tokens. A batch stops growing when its padding would pass this
# share of its real tokens: a micro-batch of queries of mixed lengths otherwise pads every short one
# to the longest (measured: 16 queries at a time cost 40 ms CPU each, against 33 one by one).
MAX_PADDING = 0.1
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
# Bump when the export recipe changes what is produced: the cache key includes it.
EXPORT_RECIPE = 1
OPSET = 17
# An input channel is an outlier when its largest calibration activation exceeds this many times
# the median channel's; at most OUTLIER_MAX_CHANNELS per MatMul stay in fp32.
OUTLIER_RATIO = 8.0
OUTLIER_MAX_CHANNELS = 8
# Calibration for the outlier search: which channels, not how large, so a few varied texts do.
CALIBRATION_TEXTS = (
    "Cannot log in after password reset. The reset link says it expired.",
    "VPN drops every hour since the update to version 5.2; please advise.",
    "Mein Drucker druckt nicht mehr, seit das Update installiert wurde. Bitte helfen Sie mir.",
    "The application crashes on startup with a NullPointerException in the logging module. Steps to reproduce: "
    "open the app, click settings, select language. Expected: the menu opens. Actual: crash.",
    "Our team cannot access the shared drive. We have restarted the computers, checked the network cables and "
    "cleared the cache, but the drive still does not appear. This blocks the monthly report, which is due on Friday.",
    "Sehr geehrte Damen und Herren, seit gestern erhalten wir keine E-Mails mehr. Die Fehlermeldung lautet: "
    "Postfach voll. Wir haben bereits alte Nachrichten gelöscht. Mit freundlichen Grüßen",
    "Protein kinase activity regulates cell proliferation in tumour cells, and inhibition reduced growth by 40% "
    "in mice (p < 0.01). These findings suggest a new therapeutic target. Further studies are needed.",
    "Thanks!",
    "Refund request for order 12345",
)


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads of one core count once)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        for name in ("core_cpus_list", "thread_siblings_list"):
            try:
                cores.add((topology / name).read_text().strip())
                break
            except OSError:
                continue
        else:
            cores.add(str(cpu))
    return max(1, len(cores))


def int8_needs_7bit_weights() -> bool:
    """True on x86 CPUs without VNNI, whose u8 x s8 kernels can saturate 16-bit sums with full 8-bit weights."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags)


def onnx_cache_dir(cache_dir: Path, *, source_sha256: str, variant: OnnxVariant) -> Path:
    """Where a variant lives in the cache: keyed by the weights, the ONNX Runtime version, the variant and recipe."""
    import onnxruntime

    name = f"all-mpnet-base-v2-{source_sha256[:12]}-ort{onnxruntime.__version__}-{variant}-r{EXPORT_RECIPE}"
    if variant == "onnx-int8" and int8_needs_7bit_weights():
        name += "-7bit"
    return cache_dir / "onnx" / name


# --- Export ---------------------------------------------------------------------------------------


def _encoder_forward(model: Any) -> torch.nn.Module:
    """The model's forward pass as traced: MPNet's, with position bias and padding mask summed once per batch."""
    import math

    import torch

    def self_attention(attn: Any, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, s, d = h.shape
        heads = attn.num_attention_heads
        size = d // heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, s, heads, size).transpose(1, 2)

        scores = torch.matmul(split(attn.q(h)), split(attn.k(h)).transpose(-1, -2)) / math.sqrt(size) + bias
        context = torch.matmul(scores.softmax(-1), split(attn.v(h)))
        out: torch.Tensor = attn.o(context.transpose(1, 2).reshape(b, s, d))
        return out

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            h = self.m.embeddings(input_ids=input_ids)
            encoder = self.m.encoder
            pos = torch.arange(h.size(1), dtype=torch.long, device=h.device)
            bucket = encoder.relative_position_bucket(pos[None, :] - pos[:, None])
            bias = encoder.relative_attention_bias(bucket).permute(2, 0, 1).unsqueeze(0)
            bias = bias + (1.0 - attention_mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
            for layer in encoder.layer:
                attention = layer.attention
                h = attention.LayerNorm(self_attention(attention.attn, h, bias) + h)
                h = layer.output(layer.intermediate(h), h)
            out: torch.Tensor = h
            return out

    return Encoder().eval()


def _load_torch_model(model_dir: Path) -> Any:
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # untyped in transformers
    model = AutoModel.from_pretrained(model_dir, local_files_only=True)
    if model.config.model_type != "mpnet":
        raise ConfigError(
            f"the ONNX backends support MPNet models (all-mpnet-base-v2); {model_dir} is {model.config.model_type}"
        )
    return model.eval()


def _trace(encoder: torch.nn.Module, path: Path) -> None:
    import warnings

    import torch

    ids = torch.tensor([[0, 2027, 2023, 1041, 2, 1], [0, 2027, 2023, 1041, 2000, 2]])
    mask = (ids != 1).long()
    axes = {0: "batch", 1: "sequence"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(
            encoder,
            (ids, mask),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            do_constant_folding=True,
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
        )


def _fuse(source: Path, target: Path) -> None:
    """ONNX Runtime's transformer fusions (SkipLayerNormalization, BiasGelu): portable, unlike a saved
    level-ALL graph.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    # The fusion tools log each step at INFO under their bare module names; a service log needs none of it.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("fusion", "onnx_model")) or name == "optimizer":
            logging.getLogger(name).setLevel(logging.WARNING)
    fused = optimize_model(
        str(source),
        model_type="bert",
        num_heads=12,
        hidden_size=768,
        optimization_options=FusionOptions("bert"),
        opt_level=0,
    )
    fused.save_model_to_file(str(target), use_external_data_format=False)


def _weight_key(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def _calibrate(encoder: torch.nn.Module, model_dir: Path) -> dict[str, np.ndarray]:
    """Largest |input| per channel of every encoder Linear, keyed by its (in, out) weight's digest."""
    import torch

    tokenizer = _tokenizer(model_dir)
    peaks: dict[str, np.ndarray] = {}
    hooks = []
    for module in encoder.modules():
        if isinstance(module, torch.nn.Linear):
            key = _weight_key(module.weight.detach().numpy().T)

            def hook(_mod: Any, inputs: tuple[torch.Tensor, ...], _out: Any, key: str = key) -> None:
                peak = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(0).numpy()
                peaks[key] = np.maximum(peaks[key], peak) if key in peaks else peak

            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for text in CALIBRATION_TEXTS:  # one at a time: padding would add its own activations
                enc = tokenizer.encode(text)
                encoder(torch.tensor([enc.ids]), torch.tensor([enc.attention_mask]))
    finally:
        for h in hooks:
            h.remove()
    return peaks


def _decompose_outliers(source: Path, target: Path, peaks: dict[str, np.ndarray]) -> tuple[list[str], dict[str, int]]:
    """Split each MatMul whose input has outlier channels: int8-able X*mask @ W plus fp32 X[..., C] @ W[C]."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    nodes: list[Any] = []
    fp32_nodes: list[str] = []
    shared: dict[tuple[str, tuple[int, ...]], tuple[str, str]] = {}
    split = 0
    channels = 0
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight is None:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weight)
        peak = peaks.get(_weight_key(w))
        if peak is None or w.ndim != 2:
            nodes.append(node)
            continue
        top = np.argsort(-peak)[:OUTLIER_MAX_CHANNELS]
        outliers = np.sort(top[peak[top] > OUTLIER_RATIO * float(np.median(peak))]).astype(np.int64)
        if outliers.size == 0:
            nodes.append(node)
            continue
        x = node.input[0]
        key = (x, tuple(int(c) for c in outliers))
        base = f"{node.name}/outliers"
        if key not in shared:
            mask = np.ones(w.shape[0], dtype=np.float32)
            mask[outliers] = 0.0
            graph.initializer.extend(
                [numpy_helper.from_array(mask, f"{base}/mask"), numpy_helper.from_array(outliers, f"{base}/channels")]
            )
            nodes.append(helper.make_node("Mul", [x, f"{base}/mask"], [f"{base}/ordinary"], name=f"{base}/Mask"))
            nodes.append(
                helper.make_node(
                    "Gather", [x, f"{base}/channels"], [f"{base}/outlier_in"], name=f"{base}/Gather", axis=-1
                )
            )
            shared[key] = (f"{base}/ordinary", f"{base}/outlier_in")
        ordinary, outlier_in = shared[key]
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w[outliers]), f"{base}/weight"))
        output = node.output[0]
        node.input[0] = ordinary
        node.output[0] = f"{base}/ordinary_out"
        nodes.append(node)
        nodes.append(
            helper.make_node("MatMul", [outlier_in, f"{base}/weight"], [f"{base}/outlier_out"], name=f"{base}/MatMul")
        )
        nodes.append(
            helper.make_node("Add", [f"{base}/ordinary_out", f"{base}/outlier_out"], [output], name=f"{base}/Add")
        )
        fp32_nodes.append(f"{base}/MatMul")
        split += 1
        channels += int(outliers.size)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(target))
    return fp32_nodes, {"matmuls_split": split, "outlier_channels": channels}


def _quantize(model_dir: Path, encoder: torch.nn.Module, fused: Path, target: Path, work: Path) -> dict[str, Any]:
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    peaks = _calibrate(encoder, model_dir)
    decomposed = work / "decomposed.onnx"
    fp32_nodes, stats = _decompose_outliers(fused, decomposed, peaks)
    seven_bit = int8_needs_7bit_weights()  # measured here: cosine 0.9960 with 7-bit weights, 0.9971 with 8-bit
    quantize_dynamic(
        str(decomposed),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=seven_bit,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=fp32_nodes,
        extra_options={"DefaultTensorType": TensorProto.FLOAT, "MatMulConstBOnly": True},
    )
    return {
        "quantization": "dynamic int8, per-channel weights, outlier channels in fp32",
        "weight_bits": 7 if seven_bit else 8,
        **stats,
    }


class _OnnxRuntimeRootRecords(logging.Filter):
    """Drops what onnxruntime's quantization tools log straight to the root logger (advice meant for other models)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return f"{os.sep}onnxruntime{os.sep}" not in record.pathname


def export_onnx(model_dir: Path, target_dir: Path, *, quantize: bool) -> Path:
    """Export model_dir's weights to target_dir/model.onnx (int8 when quantize), atomically; return the model file."""
    import onnxruntime
    import torch
    import transformers

    model_dir = Path(model_dir)
    target_dir = Path(target_dir)
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    logger.info("exporting %s to ONNX (%s) in %s", model_dir.name, "int8" if quantize else "fp32", target_dir)
    noise = _OnnxRuntimeRootRecords()
    with tempfile.TemporaryDirectory(dir=target_dir.parent, prefix=f".{target_dir.name}.") as tmp:
        work = Path(tmp)
        out = work / "out"
        out.mkdir()
        logging.getLogger().addFilter(noise)
        try:
            encoder = _encoder_forward(_load_torch_model(model_dir))
            _trace(encoder, work / "traced.onnx")
            _fuse(work / "traced.onnx", work / "fused.onnx")
            details: dict[str, Any] = {}
            if quantize:
                details = _quantize(model_dir, encoder, work / "fused.onnx", out / MODEL_FILE, work)
            else:
                os.replace(work / "fused.onnx", out / MODEL_FILE)
        finally:
            logging.getLogger().removeFilter(noise)
        manifest = {
            "variant": "onnx-int8" if quantize else "onnx-fp32",
            "sha256": sha256_file(out / MODEL_FILE),
            "source": str(model_dir),
            "source_sha256": sha256_file(model_dir / "model.safetensors"),
            "recipe": EXPORT_RECIPE,
            "opset": OPSET,
            "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "max_seq_length": MAX_SEQ_LENGTH,
            "export_seconds": round(time.monotonic() - started, 1),
            **details,
        }
        (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            os.replace(out, target_dir)
        except OSError:
            if not (target_dir / MANIFEST_FILE).is_file():
                raise
            logger.info("another process exported %s first; using it", target_dir)
    logger.info("exported %s in %.0f s", target_dir.name, time.monotonic() - started)
    return target_dir / MODEL_FILE


# --- Inference ------------------------------------------------------------------------------------


def _tokenizer(model_dir: Path, max_length: int = MAX_SEQ_LENGTH) -> Any:
    from tokenizers import Tokenizer

    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(f"no tokenizer.json in {model_dir}: the ONNX backends need the model's fast tokenizer")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.no_padding()  # batches are padded here, to their own longest text
    return tokenizer


class OnnxEmbeddings(Embeddings):
    """all-mpnet-base-v2 vectors from an ONNX Runtime session: mean pooling over real tokens, L2-normalised.

    One session serves every thread (InferenceSession.run is thread-safe); texts are batched by
    token length so batches carry little padding.
    """

    def __init__(
        self,
        model_path: Path,
        tokenizer_dir: Path,
        *,
        variant: OnnxVariant,
        model_sha256: str,
        batch_size: int = 32,
        max_batch_tokens: int = MAX_BATCH_TOKENS,
        threads: int | None = None,
        spin: bool = False,
        max_seq_length: int = MAX_SEQ_LENGTH,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or physical_cores()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Workers spinning while idle take CPU from Weaviate and the web server beside us; spinning
        # saves ~4 ms on a one-query call (measured int8 p50 18.6 ms without, 14.3 ms with).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self._tokenizer = _tokenizer(tokenizer_dir, max_seq_length)
        self._pad_id = self._tokenizer.token_to_id("<pad>")
        if self._pad_id is None:
            raise ConfigError(f"the tokenizer in {tokenizer_dir} has no <pad> token")
        self.variant = variant
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_seq_length = max_seq_length
        self.model_sha256 = model_sha256
        self.threads = options.intra_op_num_threads

    @property
    def encode_kwargs(self) -> dict[str, Any]:
        """What decides the vectors besides the weights; embedding_cache.model_key reads it, so each variant caches
        apart.
        """
        return {"backend": self.variant, "onnx_sha256": self.model_sha256, "max_seq_length": self.max_seq_length}

    def _batches(self, texts: Sequence[str]) -> Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        encodings = self._tokenizer.encode_batch(list(texts))
        lengths = np.array([len(e.ids) for e in encodings])
        order = np.argsort(lengths, kind="stable")
        start = 0
        while start < len(order):
            # Up to batch_size texts, and no more padded tokens than max_batch_tokens: small batches of long
            # texts keep the attention tensors in cache (measured: batches of ~1,000 tokens ran 20-35% faster than 32
            # abstracts).
            width = int(lengths[order[start]])
            end = start + 1
            real = width
            while end < len(order) and end - start < self.batch_size:
                wider = int(lengths[order[end]])  # sorted: the newcomer is the longest yet
                padded = wider * (end + 1 - start)
                if padded > self.max_batch_tokens or padded > (1 + MAX_PADDING) * (real + wider):
                    break
                width, real = wider, real + wider
                end += 1
            rows = order[start:end]
            start = end
            ids = np.full((len(rows), width), self._pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for i, row in enumerate(rows):
                n = lengths[row]
                ids[i, :n] = encodings[row].ids
                mask[i, :n] = 1
            yield rows, ids, mask

    def embed_array(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text, in the order given."""
        out = np.zeros((len(texts), 768), dtype=np.float32)
        for rows, ids, mask in self._batches(texts):
            (hidden,) = self._session.run(None, {"input_ids": ids, "attention_mask": mask})
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
            norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            out[rows] = pooled / norms
        return out

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Vectors for documents, batched by length."""
        if not texts:
            return []
        vectors: list[list[float]] = self.embed_array(texts).tolist()
        return vectors

    def embed_query(self, text: str) -> list[float]:
        """The vector of one query."""
        vector: list[float] = self.embed_array([text])[0].tolist()
        return vector


def ensure_onnx_model(
    model_dir: Path, cache_dir: Path, variant: OnnxVariant, *, source_sha256: str | None = None
) -> Path:
    """Return the verified exported model file of this variant, exporting it on first use."""
    if variant not in VARIANTS:
        raise ConfigError(f"EMBEDDING_BACKEND: unknown ONNX variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    model_dir = Path(model_dir)
    source_sha256 = source_sha256 or sha256_file(model_dir / "model.safetensors")
    target = onnx_cache_dir(cache_dir, source_sha256=source_sha256, variant=variant)
    if not (target / MANIFEST_FILE).is_file():
        export_onnx(model_dir, target, quantize=variant == "onnx-int8")
    fix = f"delete {target} and run again to export it anew"
    try:
        manifest = json.loads((target / MANIFEST_FILE).read_text())
        expected, source = str(manifest["sha256"]), str(manifest["source_sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"the ONNX export manifest in {target} is unreadable ({exc}): {fix}") from None
    if source != source_sha256:
        raise ConfigError(f"the ONNX export in {target} was made from other weights (sha256 {source}): {fix}")
    verify_sha256(target / MODEL_FILE, expected, what=f"the exported {variant} model", fix=fix)
    return target / MODEL_FILE


def build_onnx_embeddings(
    model_dir: Path,
    cache_dir: Path,
    variant: OnnxVariant,
    *,
    source_sha256: str | None = None,
    batch_size: int = 32,
    threads: int | None = None,
) -> OnnxEmbeddings:
    """The ONNX Runtime embeddings of model_dir's weights (exported into cache_dir on first use)."""
    model_path = ensure_onnx_model(model_dir, cache_dir, variant, source_sha256=source_sha256)
    manifest = json.loads((model_path.parent / MANIFEST_FILE).read_text())
    try:
        embeddings = OnnxEmbeddings(
            model_path,
            Path(model_dir),
            variant=variant,
            model_sha256=manifest["sha256"],
            batch_size=batch_size,
            threads=threads,
        )
    except ConfigError:
        raise
    except Exception as exc:  # onnxruntime's own errors: a damaged graph or an unsupported CPU
        raise ConfigError(
            f"the {variant} model at {model_path} could not be loaded: {type(exc).__name__}: {exc}"
        ) from exc
    logger.info("loaded %s embeddings from %s (%d threads)", variant, model_path.parent.name, embeddings.threads)
    return embeddings
