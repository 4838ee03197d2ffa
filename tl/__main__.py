from tl.cli import main

main()
