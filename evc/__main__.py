from evc.cli import main

main()
