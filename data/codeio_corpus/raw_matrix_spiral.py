import numpy as np

grid = np.arange(1, 13).reshape(3, 4)
order = []
while grid.size:
    order.extend(grid[0].tolist())
    grid = np.rot90(grid[1:])
print(order)
