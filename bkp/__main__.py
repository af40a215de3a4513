from bkp.cli import main

main()
