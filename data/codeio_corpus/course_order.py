"""Problem Statement:
Courses 0..n-1 have prerequisites: a pair [a, b] means b must be taken before a. If at each moment
the lowest-numbered available course is taken, in which order are the courses taken? If the
prerequisites form a cycle, what is left is impossible.

Input Output Description:
Input:
    n (int): the number of courses, 1 <= n <= 8.
    prerequisites (list of [int, int]): up to 8 pairs [a, b].
Output:
    return (list of int): the order taken; shorter than n when there is a cycle.
"""
import heapq
import random


def main_solution(n, prerequisites):
    needs = [0] * n
    unlocks = [[] for _ in range(n)]
    for course, before in prerequisites:
        needs[course] += 1
        unlocks[before].append(course)
    ready = [c for c in range(n) if needs[c] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        course = heapq.heappop(ready)
        order.append(course)
        for nxt in unlocks[course]:
            needs[nxt] -= 1
            if needs[nxt] == 0:
                heapq.heappush(ready, nxt)
    return order


def input_generator():
    n = random.randint(1, 8)
    pairs = [[random.randrange(n), random.randrange(n)] for _ in range(random.randint(0, 8))]
    return {"n": n, "prerequisites": [p for p in pairs if p[0] != p[1]]}
