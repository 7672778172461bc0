from evc_infer.cli import main

raise SystemExit(main())
