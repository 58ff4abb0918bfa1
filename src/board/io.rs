//! Board I/O through `embedded-hal` digital pins: a status LED (a short blink when a known
//! person is recognised, steady on while there is an error) and an enroll button (debounced;
//! one press enrols the current track). Pins come from the board profile (`[io]`); on Linux they
//! are GPIO character-device lines through `linux-embedded-hal`. Time is passed in by the caller,
//! so tests drive these with fake pins and a simulated clock.

use std::time::Duration;

use embedded_hal::digital::{InputPin, OutputPin};

use super::GpioLine;

/// How long the LED stays on for a recognised person.
pub const BLINK: Duration = Duration::from_millis(300);
/// How long the button must read pressed before it counts.
pub const DEBOUNCE: Duration = Duration::from_millis(30);

#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("{}: line {line}: {reason} (check the board profile's [io] section and that this user may open the GPIO chip: under systemd, board/systemd/gpio.conf)", chip.display())]
    Open {
        chip: std::path::PathBuf,
        line: u32,
        reason: String,
    },
    #[error("{what}: {reason}")]
    Pin { what: &'static str, reason: String },
}

/// The status LED. Changes the pin only when its state changes.
pub struct StatusLed<P> {
    pin: P,
    lit: Option<bool>,
    blink_until: Option<Duration>,
    error: bool,
}

impl<P: OutputPin> StatusLed<P> {
    pub fn new(pin: P) -> Self {
        StatusLed {
            pin,
            lit: None,
            blink_until: None,
            error: false,
        }
    }

    /// A known person was recognised at `now`: blink.
    pub fn known_person(&mut self, now: Duration) {
        self.blink_until = Some(now + BLINK);
    }

    /// Steady on while `error` (camera lost, gallery cannot be saved).
    pub fn set_error(&mut self, error: bool) {
        self.error = error;
    }

    /// Drives the pin for time `now`.
    pub fn update(&mut self, now: Duration) -> Result<(), IoError> {
        let blinking = self.blink_until.is_some_and(|t| now < t);
        if !blinking {
            self.blink_until = None;
        }
        let on = self.error || blinking;
        if self.lit != Some(on) {
            let result = if on {
                self.pin.set_high()
            } else {
                self.pin.set_low()
            };
            result.map_err(|e| IoError::Pin {
                what: "status LED",
                reason: format!("{:?}", embedded_hal::digital::Error::kind(&e)),
            })?;
            self.lit = Some(on);
        }
        Ok(())
    }

    pub fn into_pin(self) -> P {
        self.pin
    }
}

/// The enroll button: reports one press per debounced push.
pub struct EnrollButton<P> {
    pin: P,
    /// Since when the raw reading has been "pressed".
    pressed_since: Option<Duration>,
    reported: bool,
}

impl<P: InputPin> EnrollButton<P> {
    /// `pin` reads high when pressed (active-low wiring is handled by the line's flags).
    pub fn new(pin: P) -> Self {
        EnrollButton {
            pin,
            pressed_since: None,
            reported: false,
        }
    }

    /// Samples the pin at `now`; true once per press, after it has been held for [`DEBOUNCE`].
    pub fn poll(&mut self, now: Duration) -> Result<bool, IoError> {
        let pressed = self.pin.is_high().map_err(|e| IoError::Pin {
            what: "enroll button",
            reason: format!("{:?}", embedded_hal::digital::Error::kind(&e)),
        })?;
        if !pressed {
            self.pressed_since = None;
            self.reported = false;
            return Ok(false);
        }
        let since = *self.pressed_since.get_or_insert(now);
        if !self.reported && now.saturating_sub(since) >= DEBOUNCE {
            self.reported = true;
            return Ok(true);
        }
        Ok(false)
    }
}

/// The LED and button of a board, on Linux GPIO character devices.
pub type LinuxLed = StatusLed<linux_embedded_hal::CdevPin>;
pub type LinuxButton = EnrollButton<linux_embedded_hal::CdevPin>;

fn request(line: &GpioLine, output: bool) -> Result<linux_embedded_hal::CdevPin, IoError> {
    use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};
    let open = |reason: String| IoError::Open {
        chip: line.chip.clone(),
        line: line.line,
        reason,
    };
    let mut chip = Chip::new(&line.chip).map_err(|e| open(e.to_string()))?;
    let handle_line = chip.get_line(line.line).map_err(|e| open(e.to_string()))?;
    let mut flags = if output {
        LineRequestFlags::OUTPUT
    } else {
        LineRequestFlags::INPUT
    };
    if line.active_low {
        flags |= LineRequestFlags::ACTIVE_LOW;
    }
    let handle = handle_line
        .request(flags, 0, "reidcam")
        .map_err(|e| open(e.to_string()))?;
    linux_embedded_hal::CdevPin::new(handle).map_err(|e| open(e.to_string()))
}

/// Opens the LED line of a board profile.
pub fn open_led(line: &GpioLine) -> Result<LinuxLed, IoError> {
    Ok(StatusLed::new(request(line, true)?))
}

/// Opens the button line of a board profile.
pub fn open_button(line: &GpioLine) -> Result<LinuxButton, IoError> {
    Ok(EnrollButton::new(request(line, false)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// A pin that records writes and reads from a shared level.
    #[derive(Clone, Default)]
    struct FakePin {
        level: Rc<RefCell<bool>>,
        writes: Rc<RefCell<Vec<bool>>>,
    }

    impl embedded_hal::digital::ErrorType for FakePin {
        type Error = core::convert::Infallible;
    }

    impl OutputPin for FakePin {
        fn set_low(&mut self) -> Result<(), Self::Error> {
            *self.level.borrow_mut() = false;
            self.writes.borrow_mut().push(false);
            Ok(())
        }
        fn set_high(&mut self) -> Result<(), Self::Error> {
            *self.level.borrow_mut() = true;
            self.writes.borrow_mut().push(true);
            Ok(())
        }
    }

    impl InputPin for FakePin {
        fn is_high(&mut self) -> Result<bool, Self::Error> {
            Ok(*self.level.borrow())
        }
        fn is_low(&mut self) -> Result<bool, Self::Error> {
            Ok(!*self.level.borrow())
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn led_blinks_for_a_known_person_and_stays_on_for_errors() {
        let pin = FakePin::default();
        let mut led = StatusLed::new(pin.clone());
        led.update(ms(0)).unwrap();
        assert!(!*pin.level.borrow());
        led.known_person(ms(100));
        led.update(ms(100)).unwrap();
        assert!(*pin.level.borrow(), "on during the blink");
        led.update(ms(399)).unwrap();
        assert!(*pin.level.borrow());
        led.update(ms(400)).unwrap();
        assert!(!*pin.level.borrow(), "off after {BLINK:?}");
        led.set_error(true);
        for t in [500, 900, 5000] {
            led.update(ms(t)).unwrap();
            assert!(*pin.level.borrow(), "steady on error at {t} ms");
        }
        led.set_error(false);
        led.update(ms(6000)).unwrap();
        // Writes only on changes: off, on, off, on, off.
        assert_eq!(*pin.writes.borrow(), [false, true, false, true, false]);
    }

    #[test]
    fn button_reports_one_press_after_debounce_and_ignores_bounces() {
        let pin = FakePin::default();
        let mut button = EnrollButton::new(pin.clone());
        let mut presses = 0;
        // A bounce: 10 ms pressed, released.
        let script: &[(u64, bool)] = &[
            (0, true),
            (10, false),
            (20, true),
            (40, true),
            (55, true),
            (70, true),
            (500, true),
            (510, false),
            (600, true),
            (640, true),
        ];
        for &(t, level) in script {
            *pin.level.borrow_mut() = level;
            presses += usize::from(button.poll(ms(t)).unwrap());
        }
        // Press 1 counted at 55 ms (held since 20), held until 510: once; press 2 at 640.
        assert_eq!(presses, 2);
    }
}
