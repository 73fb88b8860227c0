"""The embedded default's broker: kombu's filesystem transport, with each
message written whole before it can be seen.

kombu's own transport creates the message file, then locks and writes it;
a consumer polling the folder does not take that lock, so it can move and
read a file that is still empty, fail to decode it, and stop consuming (and
the message is gone). Here a message is written under a name no consumer
looks at and renamed into place, which is atomic: a consumer sees the whole
message or nothing.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps

TRANSPORT = "durable.embedded_broker:Transport"


class Channel(filesystem.Channel):
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> Any:  # type: ignore[override]  # as kombu's own
        # the name kombu gives it: consumers take messages in name order
        name = f"{int(round(time.monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{name}.partial")  # no consumer matches it
        try:
            with open(partial, "wb") as f:
                f.write(dumps(payload).encode())  # type: ignore[no-untyped-call]  # kombu's encoder
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
