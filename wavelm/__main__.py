from wavelm.cli import main

raise SystemExit(main())
