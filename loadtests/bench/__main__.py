from loadtests.bench.sidebyside import main

raise SystemExit(main())
