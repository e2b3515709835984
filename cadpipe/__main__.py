from cadpipe.cli import main

raise SystemExit(main())
