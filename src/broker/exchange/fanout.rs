//! Fanout exchange: every bound destination gets every message.

use super::{Binding, Destination, Routed};

#[derive(Default)]
pub struct FanoutRouter {
    /// Each destination with the number of bindings that lead to it.
    destinations: Vec<(Destination, usize)>,
}

impl FanoutRouter {
    pub fn add(&mut self, binding: &Binding) {
        match self
            .destinations
            .iter_mut()
            .find(|(d, _)| d == &binding.destination)
        {
            Some((_, count)) => *count += 1,
            None => self.destinations.push((binding.destination.clone(), 1)),
        }
    }

    pub fn remove(&mut self, binding: &Binding) {
        if let Some(pos) = self
            .destinations
            .iter()
            .position(|(d, _)| d == &binding.destination)
        {
            self.destinations[pos].1 -= 1;
            if self.destinations[pos].1 == 0 {
                self.destinations.remove(pos);
            }
        }
    }

    pub fn route(&self, out: &mut Routed) {
        self.destinations.iter().for_each(|(d, _)| out.add(d));
    }
}
