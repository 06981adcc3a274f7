from pocketgpt.cli import main

raise SystemExit(main())
