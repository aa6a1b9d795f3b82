"""The local profile's broker: kombu's filesystem transport, with every message written whole before it
can be seen.

kombu's filesystem transport opens a message file under its final name and then writes it. A worker
polling the folder may move and read the file in between, get an empty payload, and die with
"Unrecoverable error: JSONDecodeError" (seen in the demo on a loaded machine: the worker stopped and
its queue stalled). Here a message is written under a hidden scratch name that the transport's
reader skips, then renamed to its final name: a rename within one folder is atomic, so a reader sees
either no message or all of it. Everything else is kombu's.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    # kombu's own signature, which its stubs' abstract base declares without **kwargs.
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Put a message onto `queue`: written under a scratch name, then renamed into place."""
        # The same name as kombu's own: the reader orders messages by it and matches "<queue>.msg".
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # A leading dot and no ".msg" suffix: the reader's filter never matches a scratch file.
        scratch = os.path.join(self.data_folder_out, f".{name}.part")
        try:
            with open(scratch, "wb") as handle:
                handle.write(str_to_bytes(dumps(payload)))
            os.replace(scratch, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
