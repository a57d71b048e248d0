"""A small example to try `swiftguard complete` on: the cursor goes into the body of fib."""


def fib(n: int) -> int:
    """Return the n-th Fibonacci number (fib(0) == 0, fib(1) == 1)."""
    


if __name__ == "__main__":
    print([fib(i) for i in range(10)])
