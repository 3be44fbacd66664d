from explore.cli import main

raise SystemExit(main())
