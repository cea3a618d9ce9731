"""roost serve: a model behind the OpenAI API."""

from __future__ import annotations

import sys

from roost.cli.models import prepare
from roost.cli.run import api_key_of, thinking
from roost.cli.terminal import EXIT_INTERRUPTED


def cmd_serve(args) -> int:
    import ipaddress
    import os

    from roost.serve import server
    from roost.backends import load

    api_key = api_key_of(args)
    sock = server.listen(args.host, args.port)  # a taken port is said before minutes of loading
    model = prepare(args)
    engine = load(model.path, model.plan, engine=model.engine, isolated=True)
    given = args.model
    model_id = args.name or (os.path.basename(os.path.normpath(given)).removesuffix(".gguf")
                             if os.path.exists(given) else given)
    app = server.Server(engine, model_id, api_key=api_key, queue=args.queue, **thinking(args))
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback and not api_key:
        print(f"roost: warning: anyone who can reach {args.host} can use this server; "
              "add --api-key (or set ROOST_API_KEY)", file=sys.stderr)
    info = engine.info()
    print(f"roost: serving {model_id} ({info.engine} on {info.device}, context {info.n_ctx}) at "
          f"{server.url(sock)}/v1{' · API key required' if api_key else ''} · Ctrl-C stops", file=sys.stderr, flush=True)
    code = 0
    try:
        server.run(app, sock)
    except KeyboardInterrupt:  # uvicorn hands Ctrl-C on once it has shut down cleanly
        code = EXIT_INTERRUPTED
    finally:
        engine.close()
    print("roost: server stopped", file=sys.stderr)
    return code
