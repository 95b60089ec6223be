//! Message buffers handed to output queues by move, not copied.
//!
//! Two kinds of payload reach the output as a buffer of their own: a large message the
//! application sends back while it is being handed that very message (an echo, or the same
//! bytes to other connections: see [`Outbox::begin_lending`](super::Outbox::begin_lending)),
//! whose buffer the reactor moves out of its scratch buffer once the callback returns; and a
//! payload the protocol connection built and gives away ([`Output::push_owned`], a large
//! compressed frame). The queues keep a [`Lent`] buffer by reference count — one buffer however
//! many connections it goes to — and write it with `writev` beside the frame header.
//!
//! When the last queue has written (or dropped) it, a received message buffer goes back to the
//! reactor's pool of large buffers through [`Returns`], so the next large message reuses memory
//! that is already faulted in.
//!
//! [`Output::push_owned`]: wsloop_proto::conn::Output::push_owned

use std::cell::RefCell;
use std::fmt;
use std::mem::size_of;
use std::rc::Rc;

/// A payload buffer owned by the output queues that send it.
pub struct Lent {
    bytes: Vec<u8>,
    /// Where it goes once nobody needs it (`None`: it is freed).
    home: Option<Returns>,
}

impl Lent {
    /// `bytes`, to be shared by the queues that send them, and given back to `home` once
    /// written.
    pub fn new(bytes: Vec<u8>, home: Option<&Returns>) -> Rc<Lent> {
        Rc::new(Lent {
            bytes,
            home: home.cloned(),
        })
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Memory it keeps allocated: its capacity, with the reference counts and itself.
    pub fn held(&self) -> usize {
        self.bytes.capacity() + size_of::<Lent>() + 2 * size_of::<usize>()
    }
}

impl fmt::Debug for Lent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lent({} bytes)", self.bytes.len())
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(home) = &self.home {
            home.put(std::mem::take(&mut self.bytes));
        }
    }
}

/// Buffers on their way back to the reactor's pool: dropped [`Lent`] buffers land here, and
/// the reactor moves them into its pool ([`Returns::drain`]) at the start of each read and
/// the end of each turn.
#[derive(Debug, Clone, Default)]
pub struct Returns(Rc<RefCell<Vec<Vec<u8>>>>);

impl Returns {
    fn put(&self, buf: Vec<u8>) {
        // Never borrowed while a buffer drops (`drain` holds the borrow only to swap the
        // list out); were it, the buffer would simply be freed.
        if let Ok(mut bin) = self.0.try_borrow_mut() {
            bin.push(buf);
        }
    }

    /// The buffers given back since the last call.
    pub fn drain(&self) -> Vec<Vec<u8>> {
        self.0
            .try_borrow_mut()
            .map(|mut bin| std::mem::take(&mut *bin))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lent_buffer_goes_home_when_its_last_holder_drops_it() {
        let home = Returns::default();
        let lent = Lent::new(vec![7; 1000], Some(&home));
        let ptr = lent.bytes().as_ptr();
        let second = Rc::clone(&lent);
        drop(lent);
        assert!(home.drain().is_empty(), "still held");
        drop(second);
        let back = home.drain();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].as_ptr(), ptr);
        assert!(home.drain().is_empty());
        // Without a home it is simply freed.
        drop(Lent::new(vec![1; 10], None));
        assert!(home.drain().is_empty());
    }
}
