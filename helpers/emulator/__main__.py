"""``python -m helpers.emulator --port PORT``: the local SageMaker as a server, until Ctrl-C.

Point any client at it: ``aws --endpoint-url http://127.0.0.1:PORT sagemaker list-training-jobs``,
or ``export AWS_ENDPOINT_URL=http://127.0.0.1:PORT`` for boto3 and the SageMaker SDK.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
import logging
import signal
import sys
import threading
from typing import Sequence

from helpers.emulator.server import CREDENTIALS, LocalSageMaker
from helpers.runtime.fileio import atomic_write_json


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m helpers.emulator", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=5005, help="loopback port (0: a free one)")
    p.add_argument("--work-dir", default=".work", help="where job folders go (emulator/training/NAME)")
    p.add_argument("--stop-grace", type=float, default=120.0,
                   help="seconds a stopped job has between SIGTERM and SIGKILL (the service gives 120)")
    p.add_argument("--state-file", help="write {pid, endpoint_url, started} here once listening; removed on exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        with LocalSageMaker(args.work_dir, port=args.port, stop_grace_s=args.stop_grace, prewarm=True) as sm:
            if args.state_file:
                atomic_write_json(Path(args.state_file), {"pid": os.getpid(), "endpoint_url": sm.endpoint_url,
                                                          "started": time.time()})
            print(f"local SageMaker listening on {sm.endpoint_url}", flush=True)
            print(f"  export AWS_ENDPOINT_URL={sm.endpoint_url} AWS_DEFAULT_REGION=us-east-1 "
                  + " ".join(f"{k}={v}" for k, v in CREDENTIALS.items()), flush=True)
            done.wait()
    except KeyboardInterrupt:
        pass
    except OSError as e:
        print(f"error: cannot listen on 127.0.0.1:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 1
    finally:
        if args.state_file:
            Path(args.state_file).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
