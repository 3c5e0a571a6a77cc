from medmtl.cli import main

main()
