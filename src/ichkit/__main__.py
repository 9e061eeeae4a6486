from ichkit.cli import main

raise SystemExit(main())
