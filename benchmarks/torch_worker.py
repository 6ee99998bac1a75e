"""timm's side of the zoo benchmark, in a process of its own.

Measured on the 2-core machine: a JAX train step run in the same process right after a timm train
step took 3.3-4.7 s instead of 2.2 s (B1, batch 32); the step after it was back to 2.2 s. No thread
was spinning in between (1 s of sleep used 0.01 s of CPU) and neither trimming the heap nor freeing
1 GB reproduced it, so the cause is the two frameworks' memory use in one process, not either
framework alone. Users run one framework per process; so does the benchmark: this worker owns torch,
and the parent alternates between its own JAX runs and requests to the worker, which times each run
itself (pipe latency excluded).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from typing import Any, BinaryIO


class _Conn:
    """Pickled messages over a pair of binary pipes."""

    def __init__(self, rx: BinaryIO, tx: BinaryIO):
        self.rx, self.tx = rx, tx

    def send(self, obj: Any) -> None:
        pickle.dump(obj, self.tx, protocol=pickle.HIGHEST_PROTOCOL)
        self.tx.flush()

    def recv(self) -> Any:
        return pickle.load(self.rx)


def _serve(conn: _Conn, threads: int) -> None:
    import numpy as np
    import timm
    import torch

    torch.set_num_threads(threads)
    run = None
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            return
        if msg[0] == "setup":
            _, name, state, images, labels, train = msg
            model = timm.create_model(name, pretrained=False)
            model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
            xt = torch.from_numpy(np.array(images))
            if train:
                model.train()
                opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
                yt = torch.from_numpy(np.array(labels)).long()

                def run(model=model, opt=opt, xt=xt, yt=yt):
                    opt.zero_grad(set_to_none=True)
                    torch.nn.functional.cross_entropy(model(xt), yt).backward()
                    opt.step()
            else:
                model.eval()

                def run(model=model, xt=xt):
                    with torch.inference_mode():
                        model(xt)

            conn.send(("ok",))
        elif msg[0] == "run":
            t = time.perf_counter()
            run()
            conn.send(("time", time.perf_counter() - t))


class TorchWorker:
    """A child process holding one timm model; ``worker()`` runs it once and returns the seconds.

    A plain subprocess (not multiprocessing): it does not re-import the parent's main module,
    so the benchmark works the same run as a script or loaded by path in the tests.
    """

    def __init__(self, threads: int):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.conn = _Conn(self.proc.stdout, self.proc.stdin)

    def setup(
        self, name: str, state: dict[str, Any], images: Any, labels: Any, train: bool
    ) -> None:
        self.conn.send(("setup", name, state, images, labels, train))
        self._reply()

    def __call__(self) -> float:
        self.conn.send(("run",))
        return self._reply()[1]

    def _reply(self) -> tuple:
        try:
            return self.conn.recv()
        except EOFError:
            raise RuntimeError(f"torch worker exited with {self.proc.wait()}") from None

    def close(self) -> None:
        try:
            self.conn.send(("stop",))
            self.proc.wait(10)
        except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
            self.proc.kill()


if __name__ == "__main__":
    # stdout carries the replies: anything a library prints goes to stderr instead
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    _serve(_Conn(sys.stdin.buffer, out), int(sys.argv[1]))
