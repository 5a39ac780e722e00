"""Writes audit records as fast as it can and prints each request id once its commit returned
(python -m tests.fault.audit_writer DIR KEY)."""

import asyncio
import sys

from ext_proc.audit.config import AuditConfig
from ext_proc.audit.log import open_audit_log


async def main(directory: str, key: str) -> None:
    log = open_audit_log(AuditConfig.from_dict({"dir": directory, "signing_key": key}), writer_id="crashy")
    await log.start()
    i = 0

    async def one(n: int) -> None:
        await log.commit({"kind": "decision", "request_id": f"r{n}", "pad": "x" * 2000})
        sys.stdout.write(f"r{n}\n")
        sys.stdout.flush()
    while True:
        await asyncio.gather(*(one(i + k) for k in range(50)))
        i += 50


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
