from modelscale.cli import main

raise SystemExit(main())
