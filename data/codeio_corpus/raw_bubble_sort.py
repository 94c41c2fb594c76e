# Sort a list of numbers with bubble sort and count the swaps.
numbers = [5, 1, 4, 2, 8]
swaps = 0
for end in range(len(numbers) - 1, 0, -1):
    for i in range(end):
        if numbers[i] > numbers[i + 1]:
            numbers[i], numbers[i + 1] = numbers[i + 1], numbers[i]
            swaps += 1
print("sorted:", numbers)
print("swaps:", swaps)
