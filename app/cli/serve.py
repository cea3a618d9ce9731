"""roost serve: models behind the OpenAI API, loaded on demand."""

from __future__ import annotations

import sys

from roost.cli.models import prepare
from roost.cli.run import api_key_of, thinking
from roost.cli.terminal import EXIT_INTERRUPTED
from roost.errors import UsageError
from roost.backends import chat_template


def cmd_serve(args) -> int:
    import ipaddress
    import os

    from roost.serve import server, state
    from roost.serve.pool import DEFAULT_KEEP_ALIVE
    from roost.backends import load

    if args.name and not args.model:
        raise UsageError("--name is MODEL's id in the API: give MODEL too")
    api_key = _key_on_stdin() if args.api_key_stdin else api_key_of(args)
    sock = server.listen(args.host, args.port)  # a taken port is said before minutes of loading
    # Found by `roost run`, `roost ps` and `roost stop` here; a load that fails leaves the file to
    # the next reader, which deletes it once this process is gone (state.running).
    announced = state.announce(server.url(sock), api_key, args.host)
    pool = _pool(args)  # the machine's memory is read before MODEL takes its share
    given = args.model
    if given:
        model = prepare(args)
        model_id = args.name or (os.path.basename(os.path.normpath(given)).removesuffix(".gguf")
                                 if os.path.exists(given) else given)
        if (why := pool.too_big(model_id, model)) is not None:
            raise UsageError(why)
        engine = load(model.path, model.plan, engine=model.engine, isolated=True)
        # Kept loaded unless --keep-alive is given for it too.
        pool.add(model_id, engine, model, keep_alive=getattr(args, "keep_alive", None), aliases=(given,))
    app = server.Server(pool=pool, api_key=api_key, truncate=args.truncate, **thinking(args))
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback and not api_key:
        print(f"roost: warning: anyone who can reach {args.host} can use this server; "
              "add --api-key (or set ROOST_API_KEY)", file=sys.stderr)
    where = f"{server.url(sock)}/v1{' · API key required' if api_key else ''} · Ctrl-C stops"
    if given:
        info = engine.info()
        if (missing := chat_template.missing_note(info.chat_template, model_id)) is not None:
            print(f"roost: note: {missing}", file=sys.stderr)  # said once here: clients see only the answers
        print(f"roost: serving {model_id} ({info.engine} on {info.device}, context {info.n_ctx}) at {where}",
              file=sys.stderr, flush=True)
    else:
        keep = getattr(args, "keep_alive", DEFAULT_KEEP_ALIVE)
        kept = "until stopped" if keep is None else f"unloaded after {keep:g} s idle"
        print(f"roost: serving the models requests name, loaded on demand ({kept}) at {where}",
              file=sys.stderr, flush=True)
    code = 0
    try:
        server.run(app, sock)
    except KeyboardInterrupt:  # uvicorn hands Ctrl-C on once it has shut down cleanly
        code = EXIT_INTERRUPTED
    finally:
        state.withdraw(announced)
        pool.close()
    print("roost: server stopped", file=sys.stderr)
    return code


def _key_on_stdin() -> str:
    """--api-key-stdin: the key is stdin's first line (out of the box's `ps`, where a
    command line shows), and the server stops as at Ctrl-C when stdin closes or a hang-up
    comes: roost chat --ssh starts it so, and its ssh session going takes the server with it."""
    import os
    import signal
    import threading

    key = sys.stdin.readline().strip()
    if not key:
        raise UsageError("--api-key-stdin: standard input gave no key on its first line")

    def stop(*_) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # uvicorn's shutdown, or KeyboardInterrupt while loading

    signal.signal(signal.SIGHUP, stop)
    threading.Thread(target=lambda: (sys.stdin.read(), stop()), daemon=True).start()
    return key


def _pool(args):
    """The server's models: loaded as loading.prepare finds and plans them (with serve's
    --ctx, --engine, --gpu-layers, --threads, --kv, --flash-attn), within the memory
    `roost fit` finds free here now, or --max-memory."""
    from roost.machine import fit, hardware
    from roost.models import loading
    from roost.serve.pool import DEFAULT_KEEP_ALIVE, Limits, Pool

    offload = loading.can_offload()
    machine = hardware.detect(gpus=offload)

    def resolve(name: str):
        return loading.prepare(name, ctx=args.ctx, engine=args.engine, gpu_layers=args.gpu_layers,
                               threads=args.threads, machine=machine, fetch=_download if args.pull else None,
                               kv_type=args.kv, flash_attn=args.flash_attn)

    limits = Limits.of(fit.budget(machine, use_gpu=offload and args.gpu_layers != 0), args.max_memory,
                       args.models_max)
    return Pool(resolve, limits, keep_alive=getattr(args, "keep_alive", DEFAULT_KEEP_ALIVE), queue=args.queue)


def _download(text: str, what: str, pull) -> str:
    """--pull: a model a request names is downloaded, with no one to ask; progress on stderr."""
    from roost.cli.terminal import download_bar

    print(f"roost: downloading {what} for a request for {text}", file=sys.stderr, flush=True)
    with download_bar() as on_progress:
        return pull(on_progress=on_progress)
