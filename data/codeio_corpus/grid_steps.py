"""Problem Statement:
A robot walks on the grid `grid` ("." free, "#" wall) one step up, down, left or right at a time.
How many steps does it need at least from the top-left to the bottom-right corner (-1 if
impossible)?

Input Output Description:
Input:
    grid (list of str): 2 to 6 rows of equal length 2..6 made of "." and "#".
Output:
    return (int): the number of steps, or -1.
"""
import random
from collections import deque


def main_solution(grid):
    rows, cols = len(grid), len(grid[0])
    if grid[0][0] == "#" or grid[-1][-1] == "#":
        return -1
    steps = {(0, 0): 0}
    queue = deque([(0, 0)])
    while queue:
        r, c = queue.popleft()
        for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if 0 <= nr < rows and 0 <= nc < cols and grid[nr][nc] == "." and (nr, nc) not in steps:
                steps[(nr, nc)] = steps[(r, c)] + 1
                queue.append((nr, nc))
    return steps.get((rows - 1, cols - 1), -1)


def input_generator():
    rows, cols = random.randint(2, 6), random.randint(2, 6)
    return {"grid": ["".join("#" if random.random() < 0.25 else "." for _ in range(cols)) for _ in range(rows)]}
