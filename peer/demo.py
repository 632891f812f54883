"""The crpeer demo: three stores edit one table and merge to one state."""

from __future__ import annotations

from peer.store import Store


def main() -> int:
    stores = [Store(":memory:") for _ in range(3)]
    try:
        for store in stores:
            store.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY NOT NULL, body TEXT)")
            store.make_crr("notes")
        for index, store in enumerate(stores):
            store.execute("INSERT INTO notes VALUES (?, ?)", (index, f"note from store {index}"))
        stores[0].execute("UPDATE notes SET body = 'edited twice' WHERE id = 0")
        for src in stores:
            for dst in stores:
                if src is not dst:
                    dst.apply(src.changes_since(dst.cursor(), 1000, exclude={dst.site_id}))
        views = [store.execute("SELECT * FROM notes ORDER BY id") for store in stores]
        for index, view in enumerate(views):
            print(f"store {index}: {view}")
        converged = all(view == views[0] for view in views)
        print("verdict:", "converged" if converged else "DIVERGED")
        return 0 if converged else 1
    finally:
        for store in stores:
            store.close()


if __name__ == "__main__":
    raise SystemExit(main())
