from editor.cli import main

main()
