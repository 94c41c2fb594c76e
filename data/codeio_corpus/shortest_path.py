"""Problem Statement:
Roads connect towns 0..5; road [u, v, w] is two-way and takes w hours. What is the shortest travel
time from town `source` to town `target`, or -1 if it cannot be reached?

Input Output Description:
Input:
    roads (list of [int, int, int]): up to 8 roads between towns 0..5, each taking 1..9 hours.
    source (int): the start town.
    target (int): the destination town.
Output:
    return (int): the shortest travel time, or -1.
"""
import heapq
import random
from collections import defaultdict


def main_solution(roads, source, target):
    graph = defaultdict(list)
    for u, v, w in roads:
        graph[u].append((v, w))
        graph[v].append((u, w))
    distance = {source: 0}
    heap = [(0, source)]
    while heap:
        d, town = heapq.heappop(heap)
        if d > distance.get(town, float("inf")):
            continue
        for neighbour, w in graph[town]:
            if d + w < distance.get(neighbour, float("inf")):
                distance[neighbour] = d + w
                heapq.heappush(heap, (d + w, neighbour))
    return distance.get(target, -1)


def input_generator():
    roads = [[random.randint(0, 5), random.randint(0, 5), random.randint(1, 9)] for _ in range(random.randint(1, 8))]
    return {"roads": roads, "source": random.randint(0, 5), "target": random.randint(0, 5)}
