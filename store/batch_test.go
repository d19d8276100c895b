package store

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/flakeship/flakeship/deploy"
)

func TestBatchStoresEveryWriteTogether(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "flakeship.db")
	s, err := Open(ctx, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	waiting := create(t, s, newDeploy("app", 1))

	first, second := newDeploy("app", 2), newDeploy("app", 3)
	first.DeliveryID, second.DeliveryID = "d-2", "d-3"
	again := newDeploy("app", 4)
	again.DeliveryID = "d-2" // the same delivery as first, in the same batch
	var dupErr error
	err = s.Batch(ctx, func(tx deploy.StoreTx) error {
		if err := tx.Create(ctx, first); err != nil {
			return err
		}
		if err := tx.Create(ctx, second); err != nil {
			return err
		}
		dupErr = tx.Create(ctx, again)
		// The waiting deploy and first end superseded by second, in the
		// same transaction that created them.
		for _, d := range []*deploy.Deploy{waiting, first} {
			d.State, d.SupersededBy = deploy.Superseded, ptr(second.ID)
			if err := tx.Update(ctx, d); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Batch: %v", err)
	}
	if !errors.Is(dupErr, deploy.ErrDuplicateDelivery) || again.ID != first.ID {
		t.Errorf("a delivery repeated within the batch gave %d, %v; want %d, ErrDuplicateDelivery", again.ID, dupErr, first.ID)
	}
	if first.ID != waiting.ID+1 || second.ID != waiting.ID+2 {
		t.Errorf("ids = %d, %d after %d; want the next two", first.ID, second.ID, waiting.ID)
	}
	// Everything is in the file: read it back through a new Store.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTestStore(t, path)
	got, err := s.List(ctx, deploy.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if want := []*deploy.Deploy{second, first, waiting}; !reflect.DeepEqual(got, want) {
		t.Errorf("after reopening, deploys = %+v, want %+v", got, want)
	}
	redelivered := newDeploy("app", 5)
	redelivered.DeliveryID = "d-3"
	if err := s.Create(ctx, redelivered); !errors.Is(err, deploy.ErrDuplicateDelivery) || redelivered.ID != second.ID {
		t.Errorf("a delivery of the batch again gave %d, %v; want %d, ErrDuplicateDelivery", redelivered.ID, err, second.ID)
	}
}

func TestBatchThatFailsStoresNothing(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	waiting := create(t, s, newDeploy("app", 1))
	before := *waiting

	boom := errors.New("boom")
	fresh := newDeploy("app", 2)
	fresh.DeliveryID = "d-2"
	cases := map[string]func(tx deploy.StoreTx) error{
		"fn fails": func(tx deploy.StoreTx) error {
			if err := tx.Create(ctx, fresh); err != nil {
				return err
			}
			changed := *waiting
			changed.State = deploy.Superseded
			if err := tx.Update(ctx, &changed); err != nil {
				return err
			}
			return boom
		},
		"a write fails": func(tx deploy.StoreTx) error {
			if err := tx.Create(ctx, fresh); err != nil {
				return err
			}
			unknown := *waiting
			unknown.ID = 999
			return tx.Update(ctx, &unknown)
		},
	}
	for name, fn := range cases {
		t.Run(name, func(t *testing.T) {
			err := s.Batch(ctx, fn)
			if err == nil {
				t.Fatal("Batch succeeded")
			}
			if name == "fn fails" && !errors.Is(err, boom) {
				t.Errorf("Batch = %v, want fn's error", err)
			}
			if name == "a write fails" && !errors.Is(err, deploy.ErrNotFound) {
				t.Errorf("Batch = %v, want ErrNotFound", err)
			}
			if fresh.ID != 0 {
				t.Errorf("the id of a deploy that was not stored stays %d, want 0", fresh.ID)
			}
			got, err := s.List(ctx, deploy.Filter{})
			if err != nil {
				t.Fatal(err)
			}
			if want := []*deploy.Deploy{&before}; !reflect.DeepEqual(got, want) {
				t.Errorf("after a failed batch, deploys = %+v, want only %+v", got, want)
			}
			// The delivery id was rolled back with its deploy: it stores now.
			d := newDeploy("app", 3)
			d.DeliveryID = fmt.Sprintf("d-2-%s", name)
			create(t, s, d)
			if err := s.Update(ctx, &before); err != nil { // the writer still works
				t.Fatal(err)
			}
			if _, err := s.write.ExecContext(ctx, `DELETE FROM deploys WHERE id = ?`, d.ID); err != nil {
				t.Fatal(err)
			}
		})
	}
	// The delivery of the failed batches was never recorded.
	d := newDeploy("app", 4)
	d.DeliveryID = "d-2"
	if err := s.Create(ctx, d); err != nil {
		t.Errorf("the delivery of a failed batch was recorded: %v", err)
	}
}

// BenchmarkBatch stores deploys in batches of 1, 16 and 64, the way the
// queue commits the pushes that wait for one sync: per deploy, a batch of n
// costs 1/n of a sync.
func BenchmarkBatch(b *testing.B) {
	ctx := context.Background()
	for _, size := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
			s := newTestStore(b)
			n := 0
			b.ResetTimer()
			for b.Loop() {
				err := s.Batch(ctx, func(tx deploy.StoreTx) error {
					for range size {
						n++
						d := newDeploy("app", n)
						d.DeliveryID = fmt.Sprintf("delivery-%d", n)
						if err := tx.Create(ctx, d); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/deploy")
		})
	}
}

func TestBatchStoresPlannedDeploysInTheirFinalState(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	old := newDeploy("app", 1)
	old.DeliveryID = "d-1"
	create(t, s, old)

	first, second := newDeploy("app", 2), newDeploy("app", 3)
	err := s.Batch(ctx, func(tx deploy.StoreTx) error {
		if id, err := tx.Delivered(ctx, old.Forge, "d-1", "app"); err != nil || id != old.ID {
			t.Errorf("Delivered(d-1) = %d, %v; want %d", id, err, old.ID)
		}
		if id, err := tx.Delivered(ctx, old.Forge, "d-1", "other"); err != nil || id != 0 {
			t.Errorf("Delivered(d-1, another target) = %d, %v; want 0", id, err)
		}
		next, err := tx.NextID(ctx)
		if err != nil {
			return err
		}
		if next != old.ID+1 {
			t.Errorf("NextID = %d, want %d", next, old.ID+1)
		}
		// Both ids planned; second stored first, then first, superseded
		// by it, in its final state.
		first.ID, second.ID = next, next+1
		first.State, first.SupersededBy = deploy.Superseded, ptr(second.ID)
		if err := tx.Create(ctx, second); err != nil {
			return err
		}
		return tx.Create(ctx, first)
	})
	if err != nil {
		t.Fatalf("Batch: %v", err)
	}
	got, err := s.Get(ctx, first.ID)
	if err != nil || got.State != deploy.Superseded || got.SupersededBy == nil || *got.SupersededBy != second.ID {
		t.Errorf("first = %+v, %v; want superseded by %d", got, err, second.ID)
	}

	// A deploy superseded by one that is not stored breaks the foreign key,
	// and nothing of the batch is stored; nor is a deploy planned with an id
	// that is taken.
	for name, fn := range map[string]func(tx deploy.StoreTx) error{
		"dangling successor": func(tx deploy.StoreTx) error {
			d := newDeploy("app", 4)
			d.State, d.SupersededBy = deploy.Superseded, ptr(int64(9999))
			return tx.Create(ctx, d)
		},
		"taken id": func(tx deploy.StoreTx) error {
			d := newDeploy("app", 5)
			if err := tx.Create(ctx, d); err != nil {
				return err
			}
			again := newDeploy("app", 6)
			again.ID = first.ID
			return tx.Create(ctx, again)
		},
	} {
		if err := s.Batch(ctx, fn); err == nil {
			t.Errorf("%s: Batch succeeded", name)
		}
	}
	all, err := s.List(ctx, deploy.Filter{})
	if err != nil || len(all) != 3 {
		t.Errorf("after the failed batches %d deploys are stored (%v), want 3", len(all), err)
	}
}

func TestBatchRefusesAPlannedDeployOfAKnownDelivery(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	first := newDeploy("app", 1)
	first.DeliveryID = "d-1"
	create(t, s, first)
	err := s.Batch(ctx, func(tx deploy.StoreTx) error {
		next, err := tx.NextID(ctx)
		if err != nil {
			return err
		}
		again := newDeploy("app", 2)
		again.ID, again.DeliveryID = next, "d-1" // not looked up first
		return tx.Create(ctx, again)
	})
	if err == nil {
		t.Fatal("a planned deploy of a stored delivery was stored")
	}
	if all, err := s.List(ctx, deploy.Filter{}); err != nil || len(all) != 1 {
		t.Errorf("%d deploys stored (%v), want only the first", len(all), err)
	}
}
