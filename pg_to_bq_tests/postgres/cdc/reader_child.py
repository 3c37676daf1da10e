"""A reader process for the tests: reads a slot, "applies" each transaction by appending a
line to a file (its destination), stores the position and confirms every N transactions,
and reports its peak RSS. Run as `python -m pg_to_bq_tests.postgres.cdc.reader_child ARGS_JSON`."""

from __future__ import annotations

import json
import os
import resource
import sys
import time

from pg_to_bq.postgres.cdc.stream import ChangeStream


def main() -> None:
    args = json.loads(sys.argv[1])
    transactions = changes = payload = 0
    with open(args["out"], "a", encoding="utf-8") as out, \
            ChangeStream(args["url"], args["slot"], [args["publication"]],
                         start_lsn=args.get("start_lsn")) as stream:
        for txn in stream.transactions():
            for change in txn:
                changes += 1
                new = getattr(change, "new", None)
                if new is not None:
                    payload += sum(len(v) for v in new if isinstance(v, bytes))
            transactions += 1
            # The "destination commit": the transaction and its position, durably.
            out.write(f"APPLIED {txn.begin.xid} {txn.commit.end_lsn}\n")
            out.flush()
            os.fsync(out.fileno())
            every = args.get("confirm_every")
            if every and transactions % every == 0:
                stream.confirm(txn.commit.end_lsn)  # only after the "destination" has it
                out.write(f"CONFIRMED {txn.commit.end_lsn}\n")
                out.flush()
            if transactions == args.get("pause_after"):
                print("PAUSED", flush=True)
                time.sleep(3600)
        position = stream.position
    print("RESULT " + json.dumps({
        "transactions": transactions, "changes": changes, "payload_bytes": payload,
        "position": position,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)


if __name__ == "__main__":
    main()
