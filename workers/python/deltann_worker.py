"""deltann's worker for engines that live in Python: torch, openvino, tvm.

It speaks the worker protocol of docs/ENGINES.md on stdin and stdout, exactly as the built-in
`deltann worker` does for ort and tract: one request line, a Ready line, the inputs as an Arrow IPC
stream in, the results as an Arrow IPC stream out, a Done line. Everything else goes to stderr.

`deltann collect` runs it with the Python of the engine's own environment (created by `deltann
engines install ENGINE` from pinned PyPI versions), one process per cell. The script is embedded
in the deltann binary and written next to that environment, so it always matches the collector.

Latency is measured around the runtime call only, as for the built-in engines: for torch on CUDA
the call includes the synchronisation that makes its result ready; copies in and out are outside.
"""

import json
import os
import sys
import time
import traceback

PROTOCOL = 1


def send_line(out, message):
    out.write(json.dumps(message).encode() + b"\n")
    out.flush()


def versions(*distributions):
    """`name version` of each installed distribution, for the engine version."""
    from importlib import metadata

    found = []
    for name in distributions:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} missing")
    return ", ".join(found)


class Faults:
    """`DELTANN_FAULT`, as the built-in worker reads it: abort-after=N, exit-after=N, hang-after=N."""

    def __init__(self):
        self.spec = {}
        for item in os.environ.get("DELTANN_FAULT", "").split(","):
            key, _, value = item.partition("=")
            if value.strip().isdigit():
                self.spec[key.strip()] = int(value)

    def before_batch(self, done):
        if self.spec.get("abort-after") == done:
            print(f"deltann worker: injected abort after {done} batches", file=sys.stderr, flush=True)
            os.abort()
        if self.spec.get("exit-after") == done:
            print(f"deltann worker: injected exit after {done} batches", file=sys.stderr, flush=True)
            os._exit(3)
        if self.spec.get("hang-after") == done:
            print(f"deltann worker: injected hang after {done} batches", file=sys.stderr, flush=True)
            while True:
                time.sleep(3600)


class OpenVino:
    """OpenVINO Runtime: the ONNX file read by its frontend, compiled for `device` with the
    precision and performance hints as given."""

    name = "openvino"

    @staticmethod
    def version():
        import openvino as ov

        return f"{ov.get_version()} ({versions('numpy', 'pyarrow')})"

    def __init__(self, config):
        import openvino as ov

        settings = config.get("settings", {})
        device = config.get("device", "cpu").upper()
        core = ov.Core()
        model = core.read_model(config["model_path"])
        hints = {
            "INFERENCE_PRECISION_HINT": settings.get("openvino_precision", "f32"),
            "PERFORMANCE_HINT": settings.get("openvino_hint", "latency").upper(),
            "INFERENCE_NUM_THREADS": int(config.get("threads", 1)),
        }
        self.compiled = core.compile_model(model, device, hints)
        self.request = self.compiled.create_infer_request()

    def run(self, x):
        started = time.perf_counter_ns()
        self.request.infer({0: x})
        elapsed = time.perf_counter_ns() - started
        return self.request.get_output_tensor(0).data.copy(), elapsed


class Torch:
    """PyTorch running the same ONNX file converted by onnx2torch (the same weights, so the
    differences are the runtime's): `device` cpu or cuda, precision by autocast (fp16, bf16) or
    TF32 through the matmul and cuDNN flags, eager or compiled by inductor."""

    name = "torch"

    @staticmethod
    def version():
        import torch

        return f"{torch.__version__} ({versions('onnx2torch', 'onnx', 'numpy', 'pyarrow')})"

    def __init__(self, config):
        import onnx
        import onnx2torch
        import torch

        settings = config.get("settings", {})
        self.torch = torch
        self.device = config.get("device", "cpu")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device cuda: torch sees no CUDA device on this machine")
        precision = settings.get("torch_precision", "fp32")
        if precision == "tf32" and self.device != "cuda":
            raise RuntimeError("torch_precision tf32 applies to CUDA only")
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"
        self.autocast = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        torch.set_num_threads(int(config.get("threads", 1)))
        model = onnx2torch.convert(onnx.load(config["model_path"])).eval().to(self.device)
        if settings.get("torch_compile", "eager") == "inductor":
            model = torch.compile(model, backend="inductor")
        self.model = model

    def run(self, x):
        torch = self.torch
        # Arrow's buffers are read-only; torch wants to own writable memory (copied outside the
        # timed call, as every engine's input copy is).
        tensor = torch.from_numpy(x if x.flags.writeable else x.copy()).to(self.device)
        with torch.inference_mode():
            started = time.perf_counter_ns()
            if self.autocast is not None:
                with torch.autocast(device_type=self.device, dtype=self.autocast):
                    y = self.model(tensor)
            else:
                y = self.model(tensor)
            if self.device == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter_ns() - started
        if isinstance(y, (list, tuple)):
            y = y[0]
        return y.float().cpu().numpy(), elapsed


class Tvm:
    """Apache TVM: the ONNX file through its Relax frontend, built for llvm (or cuda) at the
    optimisation level given, with named passes disabled."""

    name = "tvm"

    @staticmethod
    def version():
        import tvm

        return f"{tvm.__version__} ({versions('onnx', 'numpy', 'pyarrow')})"

    def __init__(self, config):
        import onnx
        import tvm
        from tvm import relax
        from tvm.relax.frontend.onnx import from_onnx

        settings = config.get("settings", {})
        self.tvm = tvm
        device = config.get("device", "cpu")
        model = onnx.load(config["model_path"])
        name = model.graph.input[0].name
        shape = [int(config["batch_size"])] + list(config["input_shape"])
        mod = from_onnx(model, shape_dict={name: shape}, keep_params_in_input=False)
        level = int(settings.get("tvm_opt_level", "3"))
        disabled = [p for p in settings.get("tvm_disabled_pass", "").split("+") if p]
        target = tvm.target.Target("cuda" if device == "cuda" else "llvm")
        with tvm.transform.PassContext(opt_level=level, disabled_pass=disabled):
            executable = tvm.compile(mod, target=target)
        self.dev = tvm.cuda() if device == "cuda" else tvm.cpu()
        self.vm = relax.VirtualMachine(executable, self.dev)
        self.batch = shape[0]

    def run(self, x):
        tvm = self.tvm
        data = tvm.runtime.tensor(x, self.dev) if hasattr(tvm.runtime, "tensor") else tvm.nd.array(x, self.dev)
        started = time.perf_counter_ns()
        y = self.vm["main"](data)
        self.dev.sync()
        elapsed = time.perf_counter_ns() - started
        if isinstance(y, (list, tuple)) or type(y).__name__ == "Array":
            y = y[0]
        return y.numpy(), elapsed


ENGINES = {e.name: e for e in (OpenVino, Torch, Tvm)}


def result_schema(pa):
    return pa.schema(
        [
            pa.field("image_id", pa.utf8(), False),
            pa.field("repetition", pa.int32(), False),
            pa.field("batch_index", pa.int64(), False),
            pa.field("batch_rows", pa.int32(), False),
            pa.field("logits", pa.list_(pa.float32()), True),
            pa.field("latency_ns", pa.int64(), False),
            pa.field("batch_latency_ns", pa.int64(), False),
            pa.field("error", pa.utf8(), True),
        ]
    )


def serve(stdin, stdout):
    line = stdin.readline()
    if not line:
        return 0
    request = json.loads(line)
    config = request["engine"]
    kind = ENGINES.get(config.get("engine"))
    ready = {"protocol": PROTOCOL, "ok": False, "engine": config.get("engine", "?"), "engine_version": "", "load_ms": 0.0}
    if request.get("protocol") != PROTOCOL:
        ready["error"] = f"this worker speaks protocol {PROTOCOL}, the request {request.get('protocol')}"
        send_line(stdout, ready)
        return 0
    if kind is None:
        ready["error"] = f"no engine {config.get('engine')!r} in this worker"
        send_line(stdout, ready)
        return 0
    try:
        ready["engine_version"] = kind.version()
    except Exception as e:  # noqa: BLE001 - the engine's own words go back to the collector
        ready["error"] = f"cannot import {kind.name}: {e}"
        send_line(stdout, ready)
        return 0
    if request.get("probe"):
        ready["ok"] = True
        send_line(stdout, ready)
        return 0
    started = time.perf_counter()
    try:
        engine = kind(config)
    except Exception as e:  # noqa: BLE001
        traceback.print_exc(file=sys.stderr)
        ready["error"] = f"{type(e).__name__}: {e}"
        send_line(stdout, ready)
        return 0
    ready["ok"] = True
    ready["load_ms"] = (time.perf_counter() - started) * 1000.0
    send_line(stdout, ready)

    import numpy as np
    import pyarrow as pa
    import pyarrow.ipc as ipc

    faults = Faults()
    schema = result_schema(pa)
    writer = ipc.new_stream(stdout, schema)
    shape = list(config["input_shape"])
    reps = max(int(request.get("repetitions", 1)), 1)
    warmup = int(request.get("warmup", 0))
    batches = 0
    # The next input batch is read while this one runs: a thread reads ahead (pyarrow releases
    # the GIL while it waits on the pipe), at most two batches.
    import queue
    import threading

    ahead = queue.Queue(maxsize=2)

    def read_ahead():
        try:
            for batch in ipc.open_stream(stdin):
                ahead.put(batch)
        except Exception as e:  # noqa: BLE001 - handed to the main thread, which reports it
            ahead.put(e)
        ahead.put(None)

    threading.Thread(target=read_ahead, daemon=True).start()
    while (batch := ahead.get()) is not None:
        if isinstance(batch, Exception):
            raise batch
        faults.before_batch(batches)
        rows = batch.num_rows
        ids = batch.column("image_id").to_pylist()
        x = np.ascontiguousarray(batch.column("tensor").flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape([rows] + shape)
        if batches == 0:
            for _ in range(warmup):
                try:
                    engine.run(x)
                except Exception:  # noqa: BLE001 - shows again, and is recorded, in the timed runs
                    break
        # Every repetition's rows, built column by column with numpy (no per-value Python work).
        outputs, errors, latencies = [], [], []
        for rep in range(reps):
            try:
                y, ns = engine.run(x)
                y = np.asarray(y, dtype=np.float32)
                if rows == 0 or y.size % rows != 0:
                    raise ValueError(f"output shape {y.shape} does not split into the {rows} rows sent")
                outputs.append(y.reshape(rows, -1))
                errors.append(None)
            except Exception as e:  # noqa: BLE001 - the engine's words go into the error column
                outputs.append(None)
                errors.append(f"{type(e).__name__}: {e}")
                ns = 0
            latencies.append(ns)
        width = next((o.shape[1] for o in outputs if o is not None), 0)
        values = np.concatenate([o if o is not None else np.zeros((rows, width), np.float32) for o in outputs]).ravel()
        offsets = np.arange(0, rows * reps * width + 1, width, dtype=np.int32) if width else np.zeros(rows * reps + 1, np.int32)
        failed = np.repeat([o is None for o in outputs], rows)
        logits = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.float32()), mask=pa.array(failed))
        batch_ns = np.repeat(np.asarray(latencies, dtype=np.int64), rows)
        arrays = [
            pa.array(ids * reps, pa.utf8()),
            pa.array(np.repeat(np.arange(reps, dtype=np.int32), rows)),
            pa.array(np.full(rows * reps, batches, dtype=np.int64)),
            pa.array(np.full(rows * reps, rows, dtype=np.int32)),
            logits,
            pa.array(batch_ns // max(rows, 1)),
            pa.array(batch_ns),
            pa.array([e for e in errors for _ in range(rows)], pa.utf8()),
        ]
        writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
        stdout.flush()
        batches += 1
    writer.close()
    peak = None
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except Exception:  # noqa: BLE001
        pass
    done = {"batches": batches}
    if peak:
        done["peak_rss_kib"] = peak
    send_line(stdout, done)
    return 0


if __name__ == "__main__":
    sys.exit(serve(sys.stdin.buffer, sys.stdout.buffer))
