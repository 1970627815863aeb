"""What a client waits for: the reply to a control request, or a run's outputs (RemoteJob)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from nerve.runtime.tensors import SharedTensor

if TYPE_CHECKING:
    from nerve.runtime.worker.client import Client


class PendingReply:
    """A request sent to the worker whose reply has not been read yet."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reply: dict[str, Any] | None = None
        self.error: BaseException | None = None

    def _complete(self, reply: dict[str, Any] | None, error: BaseException | None) -> None:
        self.reply, self.error = reply, error
        self._event.set()


class RemoteJob(PendingReply):
    """A run submitted to a worker; ``result()`` returns the output SharedTensors."""

    def __init__(self, client: Client, msg_id: int, outputs: dict[str, SharedTensor],
                 used: list[SharedTensor]) -> None:
        self.client = client
        self.id = msg_id
        self.outputs = outputs
        self._used = used
        super().__init__()

    def done(self) -> bool:
        return self._event.is_set()

    def _complete(self, reply: dict[str, Any] | None, error: BaseException | None) -> None:
        for t in self._used:
            t._local_busy = max(0, t._local_busy - 1)
        super()._complete(reply, error)

    @property
    def status(self) -> str:
        if not self._event.is_set():
            return "pending"
        if self.reply is not None:
            return str(self.reply.get("status", "done" if self.reply.get("ok") else "failed"))
        return "failed"

    def result(self, timeout: float | None = None) -> dict[str, SharedTensor]:
        self.client._wait(self, timeout)
        if self.error is not None:
            raise self.error
        return self.outputs
