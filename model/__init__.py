"""digits' offline trainer: MNIST loading, NumPy networks, training and the weights format.

Pure NumPy: nothing here imports the web layer (`app/`) or reads settings from the environment.
"""
