from bridge.launch import main

main()
