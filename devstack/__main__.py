from devstack.stack import main

raise SystemExit(main())
